"""Issue 11's restart soak: SIGKILL the worker, publish while it is down, restart, check.

    python bench/soak_restart.py [--trials 200] [--events 300] [--lanes 4] [--burn]
                                 [--timeout 120] [--seed N]

Starts the embedded broker (Tansu) and Redis, then runs ``lanes`` independent stacks side
by side (each its own topic, consumer group, state directory and key prefix), each running
``spendstream worker`` on its DEFAULT settings (batch window, session timeout, status
interval: nothing overridden but where the services are). One trial of a lane:

1. SIGKILL the lane's worker (after a random 0-3 s, so sometimes before its first offset
   commit, sometimes after);
2. publish ``events`` events of a user of its own (exact ``Decimal`` costs) while it is down;
3. start a new worker and wait up to ``timeout`` seconds until that user's live spend key
   (``spend:user:<id>``) shows all of them, to the cent.

A trial is a **stall** when its events are not all counted within the timeout (it is then
also counted as lost, event by event), **lost** when fewer were counted, **doubled** when
more. When every lane is done, every trial user's key and the global day key are read once
more against what was published (a later replay must not double an earlier trial either).

``--burn`` starts two busy-loop processes for the whole soak, so the worker restarts with
both cores taken: the condition in which issue 11's stall showed. Exits non-zero unless it
prints 0 stalls, 0 lost and 0 doubled. Not part of the tests (one trial takes 15-30 s).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.fault.faultkit

from spendstream.embedded import EmbeddedBroker, EmbeddedRedis  # noqa: E402
from tests.fault.faultkit import Ledger, Stack, Worker, message, usage  # noqa: E402

BUDGETS = """\
users: {tiers: {free: {usd: 100000}}}
features: {chat: {period: month, usd: 100000}}
"""
COSTS = ["0.0013", "0.0021", "0.00037", "0.0009"]  # sums a float would not keep exact
OVERRIDES = ("SPENDSTREAM_STATUS_INTERVAL", "SPENDSTREAM_FLUSH_INTERVAL")
"""faultkit's test speed-ups, removed: the soak runs the worker on its defaults."""


@dataclass
class Tally:
    """What the lanes found, shared under a lock."""

    trials: int = 0
    stalls: int = 0
    lost: int = 0
    doubled: int = 0
    first_count: list[float] = field(default_factory=list)
    """Seconds from a restart to the trial's first event counted."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class Lane:
    """One stack (topic, group, state, prefix) killed and restarted ``trials`` times."""

    def __init__(self, name: str, broker: EmbeddedBroker, redis_url: str, tmp: Path,
                 args: argparse.Namespace, tally: Tally, rng: random.Random) -> None:
        self.name = name
        self.stack = Stack(broker.bootstrap, broker.url, redis_url, uuid.uuid4().hex[:10],
                           tmp, BUDGETS)
        self.args = args
        self.tally = tally
        self.rng = rng
        self.ledger = Ledger()
        self.keys = self.stack.redis()
        self.worker: Worker | None = None
        self.users: list[str] = []
        self.restarts = 0

    def start_worker(self) -> Worker:
        env = self.stack.env()
        for name in OVERRIDES:
            env.pop(name, None)
        if self.args.static:  # one stable name per lane: its restarts are the same member
            env["SPENDSTREAM_GROUP_INSTANCE_ID"] = f"soak-{self.name}"
        self.restarts += 1
        self.worker = Worker(env, self.stack.tmp / f"worker-{self.restarts}.log")
        return self.worker

    def publish(self, user: str, n: int) -> None:
        events = [usage(user, cost=COSTS[i % len(COSTS)]) for i in range(n)]
        for e in events:
            self.ledger.add(e)
        self.stack.publish(message(e) for e in events)

    def counted(self, user: str) -> tuple[int, Decimal]:
        value = self.keys.get(f"spend:user:{user}")
        return (0, Decimal(0)) if value is None else (
            int(value["events"]), Decimal(value["spent_usd"]))

    def wait_counted(self, user: str, restarted: float) -> tuple[bool, float | None]:
        """Poll until ``user`` shows every published event; (done, first count after)."""
        want = (self.ledger.n[("user", user)], self.ledger.usd[("user", user)])
        deadline = restarted + self.args.timeout
        first = None
        while time.monotonic() < deadline:
            got = self.counted(user)
            if first is None and got[0] > 0:
                first = time.monotonic() - restarted
            if got == want:
                return True, first
            if got[0] > want[0]:
                return False, first
            assert self.worker is not None
            if self.worker.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: worker exited:\n{self.worker.output()[-3000:]}")
            time.sleep(0.05)
        return False, first

    def run(self, trials: int) -> None:
        self.stack.create_topics()
        self.start_worker()
        warm = f"warm-{self.stack.uid}"
        self.publish(warm, 50)
        self.users.append(warm)
        if not self.wait_counted(warm, time.monotonic())[0]:
            raise RuntimeError(f"{self.name}: the warm-up events were not counted")
        for k in range(trials):
            time.sleep(self.rng.uniform(0, 3))
            assert self.worker is not None
            self.worker.kill()
            user = f"trial-{self.stack.uid}-{k}"
            self.users.append(user)
            self.publish(user, self.args.events)
            restarted = time.monotonic()
            self.start_worker()
            done, first = self.wait_counted(user, restarted)
            time.sleep(0.5)  # a double count shows within a flush or two: give it one
            n, usd = self.counted(user)
            want = self.ledger.n[("user", user)]
            with self.tally.lock:
                self.tally.trials += 1
                if not done and n < want:
                    self.tally.stalls += 1
                self.tally.lost += max(want - n, 0)
                self.tally.doubled += max(n - want, 0)
                if first is not None:
                    self.tally.first_count.append(first)
                t = self.tally
                print(f"[{time.strftime('%H:%M:%S')}] {self.name} trial {k + 1}/{trials}: "
                      f"{n}/{want} counted (${usd}), first count after "
                      f"{'-' if first is None else f'{first:.1f}s'}, "
                      f"{time.monotonic() - restarted:.1f}s in all | total: trials {t.trials}, "
                      f"stalls {t.stalls}, lost {t.lost}, doubled {t.doubled}", flush=True)
            if not done:
                print(f"{self.name}: trial {k + 1} not exact, worker log "
                      f"{self.worker.log}", flush=True)

    def final_check(self) -> list[str]:
        """Every trial user and the global day against what was published."""
        return self.ledger.settle(self.keys, 10, kinds=("global", "user"))


def burners(n: int) -> list[subprocess.Popen[bytes]]:
    """``n`` processes that keep one core each busy."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trials in all (over lanes)")
    parser.add_argument("--events", type=int, default=300, help="events published per trial")
    parser.add_argument("--lanes", type=int, default=4, help="stacks run side by side")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds a restarted worker has to count a trial's events")
    parser.add_argument("--burn", action="store_true", help="keep both cores busy")
    parser.add_argument("--static", action="store_true",
                        help="give each lane's worker a SPENDSTREAM_GROUP_INSTANCE_ID (static "
                             "membership: a restart takes the partitions back at once)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tally = Tally()
    burn = burners(2) if args.burn else []
    broker, redis_server = EmbeddedBroker(), EmbeddedRedis()
    lanes: list[Lane] = []
    errors: list[str] = []
    try:
        broker.start()
        redis_server.start()
        tmp = Path(tempfile.mkdtemp(prefix="soak-"))
        print(f"soak: {args.trials} trials of {args.events} events over {args.lanes} lanes, "
              f"burn={args.burn}, logs under {tmp}", flush=True)
        per_lane = [args.trials // args.lanes + (i < args.trials % args.lanes)
                    for i in range(args.lanes)]
        threads = []
        for i, n in enumerate(per_lane):
            lane_tmp = tmp / f"lane{i}"
            lane_tmp.mkdir()
            lane = Lane(f"lane{i}", broker, redis_server.url, lane_tmp, args, tally,
                        random.Random(rng.random()))
            lanes.append(lane)

            def run(lane: Lane = lane, n: int = n) -> None:
                try:
                    lane.run(n)
                except Exception as e:  # reported below; the other lanes go on
                    errors.append(f"{lane.name}: {e!r}")

            threads.append(threading.Thread(target=run, daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wrong = [f"{lane.name} {w}" for lane in lanes for w in lane.final_check()]
    finally:
        for lane in lanes:
            lane.stack.workers = [w for w in [lane.worker] if w is not None]
            lane.stack.close()
        for p in burn:
            p.kill()
            p.wait()
        redis_server.stop()
        broker.stop()
    firsts = sorted(tally.first_count)
    median = firsts[len(firsts) // 2] if firsts else float("nan")
    print(f"trials {tally.trials}, stalls {tally.stalls}, lost {tally.lost}, "
          f"doubled {tally.doubled}; first count after a restart: median {median:.1f}s, "
          f"max {max(firsts, default=float('nan')):.1f}s; final check: "
          f"{len(wrong)} totals wrong; lane errors: {len(errors)}", flush=True)
    for line in wrong + errors:
        print("  " + line)
    ok = tally.trials == args.trials and not (tally.stalls or tally.lost or tally.doubled
                                              or wrong or errors)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
