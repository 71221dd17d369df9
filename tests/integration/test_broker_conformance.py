"""What the worker relies on from a Kafka-protocol broker, checked on the embedded one.

Each test is one behaviour the worker's correctness rests on (issue 11). What it does NOT
rely on is checked too: ListOffsets(latest) may answer below the real end (Tansu answers
the base offset of the last batch + 1), so the worker reads ends from a fetch's high
watermark (``streams/consumer.py``, 3).
"""

from __future__ import annotations

import asyncio
import select
import signal
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.structs import OffsetAndMetadata

from spendstream.streams.consumer import fetched_highwaters
from spendstream.streams.membership import group_state, remove_dead_member
from spendstream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration


async def _produce(bootstrap: str, topic: str, batches: list[int], partition: int = 0) -> None:
    """``batches[i]`` records sent together (one record batch each, as a producer does)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:
        n = 0
        for size in batches:
            futures = [await producer.send(topic, b"%d" % (n + i), partition=partition)
                       for i in range(size)]
            await asyncio.gather(*futures)
            n += size
    finally:
        await producer.stop()


def _consumer(bootstrap: str, group: str | None = None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                            enable_auto_commit=False, auto_offset_reset="earliest")


async def test_a_committed_offset_round_trips_and_fetch_resumes_at_it(broker, uid):
    topic, group = f"c{uid}", f"g{uid}"
    await ensure_topics(broker.bootstrap, [topic], 1)
    await _produce(broker.bootstrap, topic, [10])
    tp = TopicPartition(topic, 0)
    first = _consumer(broker.bootstrap, group)
    await first.start()
    try:
        first.assign([tp])
        assert await first.committed(tp) is None  # never committed: None, not 0 or -1
        await first.commit({tp: OffsetAndMetadata(4, "")})
    finally:
        await first.stop()
    second = _consumer(broker.bootstrap, group)
    await second.start()
    try:
        second.assign([tp])
        assert await second.committed(tp) == 4
        await second.seek_to_committed()
        records = await second.getmany(tp, timeout_ms=5000)
        assert [r.value for r in records[tp]][:1] == [b"4"]  # the next record, not later
    finally:
        await second.stop()


async def test_seek_to_beginning_without_a_commit_reads_from_the_first_record(broker, uid):
    topic = f"c{uid}"
    await ensure_topics(broker.bootstrap, [topic], 1)
    await _produce(broker.bootstrap, topic, [5])
    tp = TopicPartition(topic, 0)
    c = _consumer(broker.bootstrap, f"g{uid}")
    await c.start()
    try:
        c.assign([tp])
        got = await c.getmany(tp, timeout_ms=5000)
        assert got[tp]
        await c.seek_to_beginning(tp)
        again = await c.getmany(tp, timeout_ms=5000)
        assert again[tp][0].offset == 0
    finally:
        await c.stop()


async def test_partition_counts_are_what_ensure_topics_reports(broker, uid):
    made, auto = f"m{uid}", f"a{uid}"
    counts = await ensure_topics(broker.bootstrap, [made], 3)
    assert counts == {made: 3}
    await _produce(broker.bootstrap, auto, [1])  # auto-created with the broker's own count
    reported = await ensure_topics(broker.bootstrap, [auto], 3)
    c = _consumer(broker.bootstrap)
    await c.start()
    try:
        await c.topics()  # fresh metadata
        assert len(c.partitions_for_topic(made) or ()) == 3
        assert len(c.partitions_for_topic(auto) or ()) == reported[auto] >= 1
    finally:
        await c.stop()


async def test_the_fetch_high_watermark_is_the_end_whatever_list_offsets_says(broker, uid):
    topic = f"c{uid}"
    await ensure_topics(broker.bootstrap, [topic], 1)
    await _produce(broker.bootstrap, topic, [100, 5])
    tp = TopicPartition(topic, 0)
    c = _consumer(broker.bootstrap)
    await c.start()
    probe = _consumer(broker.bootstrap)
    await probe.start()
    try:
        listed = (await c.end_offsets([tp]))[tp]
        assert listed <= 105  # Tansu 0.6 answers 101: never rely on it
        ends = await fetched_highwaters(probe, {tp: listed}, 10)
        assert ends == {tp: 105}
        c.assign([tp])
        c.seek(tp, 104)
        last = await c.getmany(tp, timeout_ms=5000)
        assert [r.offset for r in last[tp]] == [104] and c.highwater(tp) == 105
    finally:
        await probe.stop()
        await c.stop()


MEMBER = """\
import asyncio, sys
from aiokafka import AIOKafkaConsumer

async def main(bootstrap, topic, group, instance):
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                         group_instance_id=instance, session_timeout_ms=30000,
                         heartbeat_interval_ms=1000)
    await c.start()
    while not c.assignment():
        await c.getmany(timeout_ms=100)
    print("assigned", flush=True)
    while True:
        await c.getmany(timeout_ms=500)

asyncio.run(main(*sys.argv[1:]))
"""

def _assigned(proc: subprocess.Popen[str], timeout: float) -> list[str] | None:
    """What a member script (``MEMBER``, ``DYNAMIC_MEMBER``) printed after "assigned" once
    it got partitions; ``None`` if it exited or ``timeout`` seconds passed first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        # readline alone would block past the deadline (a broker that waited out the dead
        # member's session would still pass); the script prints whole lines, one at a time
        if not select.select([proc.stdout], [], [], left)[0]:
            return None
        line = proc.stdout.readline()
        if not line:  # exited
            return None
        words = line.split()
        if words[:1] == ["assigned"]:
            return words[1:]
    return None


@pytest.mark.slow  # half a minute: two joins of the embedded broker's group
def test_a_static_member_killed_and_restarted_gets_its_partitions_before_its_session_ends(
        broker, uid, tmp_path):
    """``SPENDSTREAM_GROUP_INSTANCE_ID``: a restarted worker is the same member, so the
    broker hands its partitions back without waiting out the dead one's session (30 s
    here, then a join of 15 s: the 25 s wait below fails a broker without static
    membership)."""
    topic = f"static-{uid}"
    asyncio.run(ensure_topics(broker.bootstrap, [topic], 2))
    script = tmp_path / "member.py"
    script.write_text(MEMBER)
    argv = [sys.executable, str(script), broker.bootstrap, topic, f"g-{uid}", f"w-{uid}"]

    first = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert _assigned(first, 60) is not None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    again = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert _assigned(again, 25) is not None, (
            "the restarted static member waited for the old session")
    finally:
        again.kill()
        again.wait()


DYNAMIC_MEMBER = """\
import asyncio, sys
from aiokafka import AIOKafkaConsumer

async def main(bootstrap, topic, group):
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                         session_timeout_ms=30000, heartbeat_interval_ms=1000)
    await c.start()
    while not c.assignment():
        await c.getmany(timeout_ms=100)
    print("assigned", c._coordinator.member_id, flush=True)
    while True:
        await c.getmany(timeout_ms=500)

asyncio.run(main(*sys.argv[1:]))
"""


def test_leave_group_for_a_killed_member_frees_its_partitions_before_its_session_ends(
        broker, uid, tmp_path):
    """What a restarted worker does with the member id its killed predecessor left
    (``streams/consumer.py``, 6): in a stable group, LeaveGroup on that id, and the next member
    is assigned without waiting out the dead one's session. The embedded broker completes a
    join after half the session (15 s here); without the LeaveGroup the dead member holds
    the group for its whole 30 s session first (45 s in all), so the 25 s wait below fails
    a broker that ignored it. The embedded broker answers 0 for an unknown member too, so
    the worker cannot tell from the answer whether the member was still there."""
    topic, group = f"leave-{uid}", f"g-{uid}"
    asyncio.run(ensure_topics(broker.bootstrap, [topic], 2))
    script = tmp_path / "member.py"
    script.write_text(DYNAMIC_MEMBER)
    argv = [sys.executable, str(script), broker.bootstrap, topic, group]

    first = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        printed = _assigned(first, 60)
        assert printed
        member = printed[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    async def leave() -> tuple[str, frozenset[str], str]:
        client = AIOKafkaClient(bootstrap_servers=broker.bootstrap)
        await client.bootstrap()
        try:
            state, members = await group_state(client, group)
            return state, members, await remove_dead_member(client, group, member)
        finally:
            await client.close()

    state, members, done = asyncio.run(leave())
    # a settled group names its state "Stable" and lists the dead member, so the worker
    # removes it (mid-rebalance it would not: see remove_dead_member)
    assert state == "Stable" and member in members, (state, members)
    assert done.startswith("removed it with LeaveGroup (answer 0)"), done
    after = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert _assigned(after, 25) is not None, (
            "the new member waited for the dead one's session")
    finally:
        after.kill()
        after.wait()
