"""The embedded broker's group coordinator, driven by hand: a leader dies between its
JoinGroup answer and its SyncGroup, and (optionally) another client sends LeaveGroup
for it, as a spendstream worker restarted on the dead one's state directory does
(``streams/consumer.py``, item 6). Does the surviving member ever get an assignment?

    python bench/tansu_leader_leave.py [--no-leave] [--stable] [--fresh] [--wait 60]

``--stable``: A dies after the generation synced (a leader of a settled group), instead.

No faust, no spendstream worker: raw JoinGroup / SyncGroup / Heartbeat / LeaveGroup
through aiokafka's client. Prints each step and exits 0 when the survivor synced.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType  # noqa: E402
from aiokafka.protocol.group import (  # noqa: E402
    HeartbeatRequest,
    JoinGroupRequest,
    LeaveGroupRequest,
    MemberAssignment,
    ProtocolMetadata,
    SyncGroupRequest,
)

from spendstream.embedded import EmbeddedBroker  # noqa: E402
from spendstream.streams.topics import ensure_topics  # noqa: E402

T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"{time.monotonic() - T0:6.2f}s {msg}", flush=True)


class Member:
    def __init__(self, name: str, bootstrap: str, group: str, topic: str) -> None:
        self.name, self.group, self.topic = name, group, topic
        self.client = AIOKafkaClient(bootstrap_servers=bootstrap)
        self.member_id = ""
        self.generation = -1
        self.node: int | None = None

    async def start(self) -> None:
        await self.client.bootstrap()
        self.node = await self.client.coordinator_lookup(CoordinationType.GROUP, self.group)

    async def send(self, request):  # noqa: ANN001, ANN201
        return await self.client.send(self.node, request, group=ConnectionGroup.COORDINATION)

    async def join(self):  # noqa: ANN201
        meta = ProtocolMetadata(0, [self.topic], b"").encode()
        while True:
            r = await self.send(JoinGroupRequest(self.group, 10000, 5000, self.member_id, None,
                                                 "consumer", [("range", meta)]))
            if r.error_code == 79:  # MEMBER_ID_REQUIRED: join again with the id given
                self.member_id = r.member_id
                continue
            break
        if r.error_code == 0:
            self.member_id, self.generation = r.member_id, r.generation_id
        say(f"{self.name}: JoinGroup -> error {r.error_code}, generation {r.generation_id}, "
            f"leader {short(r.leader_id)}, me {short(r.member_id)}, members "
            f"{[short(m[0]) for m in r.members]}")
        return r

    async def sync(self, assignments: list[tuple[str, bytes]]) -> int:
        r = await self.send(SyncGroupRequest(self.group, self.generation, self.member_id, None,
                                             assignments))
        say(f"{self.name}: SyncGroup(generation {self.generation}) -> error {r.error_code}")
        return int(r.error_code)

    async def heartbeat(self) -> int:
        r = await self.send(HeartbeatRequest(self.group, self.generation, self.member_id))
        return int(r.error_code)

    async def close(self) -> None:
        await self.client.close()


def short(member_id: str) -> str:
    return member_id[-6:] if member_id else "-"


def assign(members: list[str], topic: str) -> list[tuple[str, bytes]]:
    return [(m, MemberAssignment(0, [(topic, [i])], b"").encode())
            for i, m in enumerate(members)]


async def main(leave: bool, wait: float, stable: bool, fresh: bool = False) -> int:
    broker = EmbeddedBroker()
    broker.start()
    try:
        uid = uuid.uuid4().hex[:8]
        group, topic = f"g{uid}", f"t{uid}"
        await ensure_topics(broker.bootstrap, [topic], 2)
        a = Member("A", broker.bootstrap, group, topic)
        b = Member("B", broker.bootstrap, group, topic)
        c = AIOKafkaClient(bootstrap_servers=broker.bootstrap)
        for m in (a, b):
            await m.start()
        await c.bootstrap()

        r = await a.join()
        assert r.leader_id == a.member_id
        assert await a.sync(assign([a.member_id], topic)) == 0
        say("A is the leader of a stable group; B joins")
        b_join = asyncio.create_task(b.join())
        while (code := await a.heartbeat()) == 0:
            await asyncio.sleep(0.3)
        say(f"A: Heartbeat -> error {code} (rebalancing): A rejoins")
        ra = await a.join()
        rb = await b_join
        b_sync = asyncio.create_task(b.sync([]))
        if stable:
            await a.sync(assign([m[0] for m in ra.members], topic))
            await b_sync
            b_sync = asyncio.create_task(b.heartbeat())
            say(f"generation {ra.generation_id} synced; now A (leader) dies")
        else:
            say(f"generation {ra.generation_id}: leader {short(ra.leader_id)} (A is "
                f"{short(a.member_id)}); A now dies before its SyncGroup")
        await asyncio.sleep(0.5)
        if leave:
            node = await c.coordinator_lookup(CoordinationType.GROUP, group)
            lr = await c.send(node, LeaveGroupRequest(group, a.member_id),
                              group=ConnectionGroup.COORDINATION)
            say(f"C: LeaveGroup(A) -> error {lr.error_code}")
        start = time.monotonic()
        code = await b_sync
        if stable:  # B heartbeats until the group rebalances, then rejoins below
            while code == 0 and time.monotonic() - start < wait:
                await asyncio.sleep(0.5)
                code = await b.heartbeat()
            say(f"B: Heartbeat -> error {code}")
            code = -1
        while time.monotonic() - start < wait:
            if code == 0:
                say(f"B synced: the group recovered {time.monotonic() - start:.1f}s after "
                    f"A died")
                return 0
            rb = await b.join()
            if rb.error_code:
                await asyncio.sleep(0.5)
                code = -1
                continue
            members = [m[0] for m in rb.members]
            code = await b.sync(assign(members, topic) if rb.leader_id == b.member_id else [])
        say(f"B never synced within {wait:.0f}s: the group is wedged")
        if fresh:  # every member gone, then a new one: does the group come back?
            lr = await b.send(LeaveGroupRequest(group, b.member_id))
            say(f"B: LeaveGroup(B) -> error {lr.error_code}; a new member D joins")
            d = Member("D", broker.bootstrap, group, topic)
            await d.start()
            try:
                for _ in range(3):
                    rd = await d.join()
                    if rd.error_code == 0 and await d.sync(
                            assign([m[0] for m in rd.members], topic)
                            if rd.leader_id == d.member_id else []) == 0:
                        say("D synced: the group came back once emptied")
                        break
                else:
                    say("D never synced either")
            finally:
                await d.close()
        return 1
    finally:
        for m in (a, b):
            await m.close()
        await c.close()
        broker.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-leave", action="store_true", help="no LeaveGroup: the session expires")
    p.add_argument("--stable", action="store_true", help="A dies after its SyncGroup")
    p.add_argument("--fresh", action="store_true",
                   help="after the wedge: B leaves, a new member D joins (does it recover?)")
    p.add_argument("--wait", type=float, default=60.0)
    args = p.parse_args()
    sys.exit(asyncio.run(main(not args.no_leave, args.wait, args.stable, args.fresh)))
