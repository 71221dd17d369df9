"""Rebalance churn against real processes: workers come and go while events keep coming.

    python bench/churn.py churn   [--runs N] [--burn] [--seconds 75] [--rate 100] [--workers 3]
    python bench/churn.py shared  [--runs N] [--burn] [--seconds 60] [--rate 100]
    python bench/churn.py sigterm [--runs N] [--burn] [--backlog 50000]
    python bench/churn.py join    [--runs N] [--burn] [--backlog 50000]
    python bench/churn.py leader  [--runs N] [--burn] [--restart same|new|random]

Starts the embedded broker (Tansu) and Redis, a stack of its own per run (topic, group,
prefix), and ``spendstream worker`` child processes (tests/fault/faultkit.py's ``Worker``).

* ``churn``: ``--workers`` workers in one group on 6 partitions; a publisher sends events of
  60 users at ``--rate`` events/s for ``--seconds``; meanwhile, every 3-8 s (random;
  ``--every-min``/``--every-max``), one of:
  SIGTERM a worker and start a new one (new state dir); SIGKILL one and restart it on the
  same state dir (the LeaveGroup path); SIGKILL one and start one on a new state dir.
* ``shared``: two workers on ONE state directory; every 3-8 s one of them is SIGKILLed and
  restarted on that same directory (does the LeaveGroup of the restart ever expel the
  live one?). Publishing as in ``churn``.
* ``sigterm``: ``--backlog`` events published before the worker starts; SIGTERM it once it
  has counted some (it must stop within 30 s); start a new one; everything must be exact.
* ``join``: ``--backlog`` events published; one worker starts counting them; a second one
  joins the group while the first is far behind (a rebalance with its feed full), then the
  first is SIGTERMed midway and restarted.
* ``leader``: the group's first member (its leader) is SIGKILLed --every-min..--every-max
  seconds after a second worker started (during its join), and restarted on the same
  state dir (it sends LeaveGroup for the dead member) or on a new one (--restart).

At the end (with the last workers running) it polls until the global day key shows every
event (``--timeout``; else a stall), then reads the global, feature and every user's
spend key against the Decimal sums of what was published: lost = fewer events, doubled =
more. Worker logs are scanned for tracebacks and the like. Exits non-zero unless every run
is exact.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.fault.faultkit

import orjson  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402

from spendstream.contract.keys import spend  # noqa: E402
from spendstream.embedded import EmbeddedBroker, EmbeddedRedis  # noqa: E402
from tests.fault.faultkit import Ledger, Stack, Worker, usage  # noqa: E402

BUDGETS = """\
users: {tiers: {free: {usd: 100000}}}
features:
  chat: {period: month, usd: 100000}
  search: {period: month, usd: 100000}
"""
COSTS = ["0.0013", "0.0021", "0.00037", "0.0009", "0.000011"]  # exact only as Decimal
USERS = 60
PATTERNS = {
    "traceback": r"Traceback \(most recent call last\)",
    "could not count a batch": r"could not count a batch",
    "CommitFailedError": r"CommitFailedError",
    "ERROR lines": r"\bERROR\b|\[E\]|\| ERROR",
    "crash": r"[Cc]rashed|crash\(",
    "Discarded commit for revoked": r"Discarded commit for revoked",
    "sent LeaveGroup": r"removed it with LeaveGroup",
    "LeaveGroup skipped (rebalancing)": r"not removed: the group is rebalancing",
    "LeaveGroup failed": r"could not remove the previous member",
    "rebalance again": r"[Rr]ebalanc\w* again",
    "wait_empty waiting": r"wait_empty: Waiting",
    "flight recorder": r"Warning: Task timed out|flight_recorder|Timer .* woke up too late",
    "illegal generation": r"IllegalGeneration|ILLEGAL_GENERATION|UnknownMemberId|UNKNOWN_MEMBER",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Publisher(threading.Thread):
    """Sends events at a steady rate from its own event loop, with one producer; an event
    goes to the ledger once the broker acknowledged it (acks=all)."""

    def __init__(self, bootstrap: str, topic: str, ledger: Ledger, rate: float,
                 seconds: float, rng: random.Random, users: int = USERS) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.ledger = bootstrap, topic, ledger
        self.rate, self.seconds, self.rng, self.users = rate, seconds, rng, users
        self.failed = 0
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:  # reported by the caller
            self.error = e

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                    linger_ms=5)
        await producer.start()
        try:
            tick = 0.1
            per_tick = self.rate * tick
            carry = 0.0
            start = time.monotonic()
            k = 0
            while time.monotonic() - start < self.seconds:
                carry += per_tick
                n, carry = int(carry), carry - int(carry)
                events = [event(self.rng, k + i, self.users) for i in range(n)]
                k += n
                futs = [await producer.send(self.topic, orjson.dumps(e),
                                            key=e["user_id"].encode()) for e in events]
                for e, f in zip(events, futs, strict=True):
                    try:
                        await f
                    except Exception:
                        self.failed += 1  # unknown whether the broker kept it
                        continue
                    self.ledger.add(e)
                    self.sent += 1
                next_at = start + tick * (k / max(per_tick, 1e-9))
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            await producer.stop()


def event(rng: random.Random, i: int, users: int) -> dict[str, Any]:
    return usage(f"user-{rng.randrange(users)}", "chat" if i % 3 else "search",
                 COSTS[rng.randrange(len(COSTS))])


async def publish_now(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        for start in range(0, len(events), 2000):
            futs = [await producer.send(topic, orjson.dumps(e), key=e["user_id"].encode())
                    for e in events[start:start + 2000]]
            await asyncio.gather(*futs)
    finally:
        await producer.stop()


@dataclass
class RunResult:
    scenario: str
    run: int
    published: int = 0
    lost: int = 0
    doubled: int = 0
    stall: bool = False
    wrong: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    stops: list[float] = field(default_factory=list)
    """Seconds each SIGTERMed worker took to exit."""
    stop_timeouts: int = 0
    bad_exits: list[str] = field(default_factory=list)
    log_hits: dict[str, int] = field(default_factory=dict)
    tmp: Path | None = None
    publish_failed: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        hits = ", ".join(f"{k} {v}" for k, v in sorted(self.log_hits.items()) if v)
        stops = (f"max {max(self.stops):.1f}s over {len(self.stops)}" if self.stops
                 else "none")
        return (f"{self.scenario} run {self.run}: published {self.published}, lost "
                f"{self.lost}, doubled {self.doubled}, stall {'YES' if self.stall else 'no'}, "
                f"totals wrong {len(self.wrong)}; actions {len(self.actions)}; SIGTERM stops "
                f"{stops}, timeouts {self.stop_timeouts}; bad exits {self.bad_exits}; "
                f"publish failures {self.publish_failed}; logs: {hits or '-'}; dir {self.tmp}")


class Run:
    """One run's stack, workers and ledger."""

    def __init__(self, scenario: str, n: int, broker: EmbeddedBroker, redis_url: str,
                 root: Path, args: argparse.Namespace, rng: random.Random) -> None:
        self.tmp = root / f"{scenario}-{n}"
        self.tmp.mkdir(parents=True)
        self.args, self.rng = args, rng
        extra = {}
        if args.session_timeout:
            extra["SPENDSTREAM_SESSION_TIMEOUT"] = str(args.session_timeout)
        self.stack = Stack(broker.bootstrap, broker.url, redis_url, uuid.uuid4().hex[:10],
                           self.tmp, BUDGETS, partitions=args.partitions, extra=extra)
        self.stack.create_topics()
        self.keys = self.stack.redis()
        self.ledger = Ledger()
        self.result = RunResult(scenario, n, tmp=self.tmp)
        self.live: list[tuple[Worker, str]] = []  # (worker, state dir name)
        self.dirs = 0

    def start(self, state: str | None = None) -> tuple[Worker, str]:
        if state is None:
            self.dirs += 1
            state = f"s{self.dirs}"
        w = self.stack.worker(state)
        self.live.append((w, state))
        return w, state

    def sigterm(self, w: Worker, state: str) -> None:
        self.live.remove((w, state))
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        try:
            w.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.result.stop_timeouts += 1
            self.result.notes.append(f"{w.log.name}: not stopped 30 s after SIGTERM")
            w.proc.kill()
            w.proc.wait()
        self.result.stops.append(time.monotonic() - t0)
        if w.proc.returncode not in (0, -signal.SIGKILL):
            self.result.bad_exits.append(f"{w.log.name}={w.proc.returncode}")
        w._out.close()

    def sigkill(self, w: Worker, state: str) -> None:
        self.live.remove((w, state))
        w.kill()

    def total_events(self) -> int:
        return self.keys.events(spend("global", "day"))

    def finish(self, timeout: float) -> RunResult:
        r = self.result
        r.published = self.ledger.total
        deadline = time.monotonic() + timeout
        while self.total_events() < r.published and time.monotonic() < deadline:
            for w, state in list(self.live):
                if w.proc.poll() is not None:
                    r.bad_exits.append(f"{w.log.name}={w.proc.returncode} (died)")
                    self.live.remove((w, state))
            if not self.live:
                break
            time.sleep(0.2)
        if self.total_events() < r.published:
            r.stall = True
        # a double count or a late write shows within a few flushes
        r.wrong = self.ledger.settle(self.keys, 10)
        for u in self.ledger.users():
            got = self.keys.events(spend("user", u))
            want = self.ledger.n[("user", u)]
            r.lost += max(0, want - got)
            r.doubled += max(0, got - want)
        return r

    def close(self) -> None:
        for w, state in list(self.live):
            self.sigterm(w, state)
        for w in self.stack.workers:
            if not w._out.closed:
                w._out.close()
        hits = dict.fromkeys(PATTERNS, 0)
        for path in sorted(self.tmp.glob("*.log")):
            text = path.read_text(errors="replace")
            for name, pattern in PATTERNS.items():
                hits[name] += len(re.findall(pattern, text))
        self.result.log_hits = hits


def wait_events(run: Run, at_least: int, timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.total_events() >= at_least:
            return True
        time.sleep(0.1)
    run.result.notes.append(f"timed out waiting for {what}")
    return False


def scenario_churn(run: Run) -> None:
    args, rng = run.args, run.rng
    for _ in range(args.workers):
        run.start()
    pub = Publisher(run.stack.bootstrap, run.stack.topic, run.ledger, args.rate, args.seconds,
                    rng)
    pub.start()
    t0 = time.monotonic()
    while pub.is_alive():
        time.sleep(rng.uniform(args.every_min, args.every_max))
        if not pub.is_alive():
            break
        action = rng.choice(["term-new", "kill-same", "kill-new"])
        w, state = rng.choice(run.live)
        run.result.actions.append(f"{time.monotonic() - t0:.1f}s {action} {w.log.name}")
        log(f"  {action} {w.log.name} (state {state})")
        if action == "term-new":
            run.sigterm(w, state)
            run.start()
        elif action == "kill-same":
            run.sigkill(w, state)
            run.start(state)
        else:
            run.sigkill(w, state)
            run.start()
    pub.join()
    run.result.publish_failed = pub.failed
    if pub.error:
        run.result.notes.append(f"publisher: {pub.error!r}")
    # End with two workers (the youngest ones stay)
    while len(run.live) > 2:
        w, state = run.live[0]
        run.result.actions.append(f"end: SIGTERM {w.log.name}")
        run.sigterm(w, state)


def scenario_shared(run: Run) -> None:
    args, rng = run.args, run.rng
    run.start("shared")
    run.start("shared")
    pub = Publisher(run.stack.bootstrap, run.stack.topic, run.ledger, args.rate, args.seconds,
                    rng)
    pub.start()
    t0 = time.monotonic()
    while pub.is_alive():
        time.sleep(rng.uniform(3, 8))
        if not pub.is_alive():
            break
        w, state = rng.choice(run.live)
        run.result.actions.append(f"{time.monotonic() - t0:.1f}s kill-same {w.log.name}")
        log(f"  SIGKILL {w.log.name}, restart on the shared state dir")
        run.sigkill(w, state)
        run.start(state)
    pub.join()
    run.result.publish_failed = pub.failed


def backlog(run: Run, n: int) -> None:
    rng = run.rng
    events = [event(rng, i, USERS) for i in range(n)]
    t0 = time.monotonic()
    asyncio.run(publish_now(run.stack.bootstrap, run.stack.topic, events))
    for e in events:
        run.ledger.add(e)
    log(f"  published a backlog of {n} events in {time.monotonic() - t0:.1f}s")


def scenario_sigterm(run: Run) -> None:
    args, rng = run.args, run.rng
    backlog(run, args.backlog)
    w, state = run.start()
    wait_events(run, rng.randint(1000, args.backlog // 3), 180, "the first counts")
    got = run.total_events()
    log(f"  SIGTERM under load after {got} of {args.backlog} counted")
    run.sigterm(w, state)
    log(f"  stopped in {run.result.stops[-1]:.1f}s (exit {w.proc.returncode})")
    run.result.actions.append(f"SIGTERM at {got} counted: {run.result.stops[-1]:.1f}s")
    run.start(state if rng.random() < 0.5 else None)


def scenario_join(run: Run) -> None:
    args, rng = run.args, run.rng
    backlog(run, args.backlog)
    a, sa = run.start()
    wait_events(run, rng.randint(500, 3000), 180, "the first counts")
    log(f"  second worker joins after {run.total_events()} counted")
    run.result.actions.append(f"join at {run.total_events()}")
    b, _ = run.start()
    deadline = time.monotonic() + 120
    while not b.ready() and time.monotonic() < deadline:  # the rebalance is done
        time.sleep(0.2)
    log(f"  second worker ready after {run.total_events()} counted")
    run.result.actions.append(f"second ready at {run.total_events()}")
    time.sleep(rng.uniform(0, 3))
    log(f"  SIGTERM the first after {run.total_events()} counted")
    run.result.actions.append(f"SIGTERM first at {run.total_events()}")
    run.sigterm(a, sa)
    run.start(sa)
    wait_events(run, run.total_events() + 2000, 180, "counting after restart")
    w, s = run.live[0]
    log(f"  SIGKILL {w.log.name} after {run.total_events()} counted, restart same dir")
    run.result.actions.append(f"SIGKILL at {run.total_events()}")
    run.sigkill(w, s)
    run.start(s)


def scenario_leader(run: Run) -> None:
    """The group's first member (its leader) is SIGKILLed while a second one joins, and
    restarted on its state dir (it sends LeaveGroup for the dead leader) or a new one."""
    args, rng = run.args, run.rng
    pub = Publisher(run.stack.bootstrap, run.stack.topic, run.ledger, args.rate, args.seconds,
                    rng)
    a, sa = run.start()
    deadline = time.monotonic() + 120
    while not a.ready() and time.monotonic() < deadline:
        time.sleep(0.2)
    pub.start()
    run.start()
    delay = rng.uniform(args.every_min, args.every_max)
    time.sleep(delay)
    same = {"same": True, "new": False}.get(args.restart, rng.random() < 0.5)
    run.result.actions.append(f"SIGKILL the leader {delay:.1f}s after the second started; "
                              f"restart on {'the same' if same else 'a new'} state dir")
    log("  " + run.result.actions[-1])
    run.sigkill(a, sa)
    run.start(sa if same else None)
    pub.join()
    run.result.publish_failed = pub.failed


SCENARIOS = {"churn": scenario_churn, "shared": scenario_shared, "sigterm": scenario_sigterm,
             "join": scenario_join,
             "leader": scenario_leader}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--burn", action="store_true", help="two busy loops keep both cores busy")
    p.add_argument("--seconds", type=float, default=75.0, help="publishing time (churn/shared)")
    p.add_argument("--rate", type=float, default=100.0, help="events per second")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--every-min", type=float, default=3.0, help="churn: least gap (s)")
    p.add_argument("--every-max", type=float, default=8.0, help="churn: largest gap (s)")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--backlog", type=int, default=50000)
    p.add_argument("--session-timeout", type=float, default=None,
                   help="SPENDSTREAM_SESSION_TIMEOUT (the worker's default when unset)")
    p.add_argument("--timeout", type=float, default=240.0,
                   help="seconds the last workers have to count everything")
    p.add_argument("--restart", choices=["same", "new", "random"], default="random",
                   help="leader: restart on the same state dir (LeaveGroup) or a new one")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the logs of exact runs too")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    burn = ([subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
            if args.burn else [])
    broker, redis_server = EmbeddedBroker(), EmbeddedRedis()
    root = Path(tempfile.mkdtemp(prefix=f"churn-{args.scenario}-"))
    results: list[RunResult] = []
    try:
        broker.start()
        redis_server.start()
        log(f"{args.scenario}: {args.runs} run(s), seed {seed}, burn={args.burn}, "
            f"logs under {root}")
        for n in range(1, args.runs + 1):
            run = Run(args.scenario, n, broker, redis_server.url, root, args,
                      random.Random(rng.random()))
            try:
                SCENARIOS[args.scenario](run)
                log(f"  waiting for every event to be counted ({run.ledger.total})")
                run.finish(args.timeout)
            finally:
                run.close()
            results.append(run.result)
            log(run.result.line())
            r = run.result
            for line in r.wrong[:20] + r.notes + (r.actions if r.stall or r.wrong else []):
                log("    " + line)
    finally:
        for b in burn:
            b.kill()
            b.wait()
        redis_server.stop()
        broker.stop()
    bad = [r for r in results if r.lost or r.doubled or r.stall or r.wrong]
    log(f"{args.scenario}: {len(results)} run(s), {len(bad)} not exact; published "
        f"{sum(r.published for r in results)}, lost {sum(r.lost for r in results)}, doubled "
        f"{sum(r.doubled for r in results)}, stalls {sum(r.stall for r in results)}")
    return 1 if bad or len(results) < args.runs else 0


if __name__ == "__main__":
    sys.exit(main())
