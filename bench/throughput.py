"""Issue 4's benchmark: the stream worker's throughput, latency, memory and exactness.

    python bench/throughput.py [--mode single|two-workers|all] [--events N] [--quick]

Starts the embedded broker (Tansu) and Redis, then runs ``python -m spendstream worker``
as a black box and reads its results from Redis, as an application would:

* **throughput** (``single``): N realistic events (100k skewed users, 30 features, four
  models, half priced by the worker) are published first; then the topic is read by a
  plain aiokafka consumer and by a bare faust agent (the two ceilings), then by the
  worker, timed from the first global total in Redis to the moment the global day, every
  feature and every expected cutoff flag are final;
* **latency** (``single``): the same worker under a steady 5,000 events/s; probe users
  cross their budget in one event, timed from ``send`` to their ``cutoff:user`` flag;
* **memory** (``single``): a fresh worker's RSS when idle and after one event from each of
  ``--memory-users`` distinct users in one day window;
* **scale-out** (``two-workers``): two workers in one consumer group on 8 partitions.

Every total (global day, hour, minute, each feature, each user) and the exact sets of
warn and cutoff flags are compared with the ``Decimal`` sums of what was published; any
difference is a FAIL and a non-zero exit. Targets (pass/miss, not the exit code):
>= 50,000 events/s per worker, >= 1/4 of the aiokafka ceiling, p99 event-to-flag < 1 s at
5,000 events/s, < 300 bytes per active user. Each run appends a JSON line to
``bench/results.jsonl`` (not with ``--quick`` or ``--no-record``). Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from _kafka import Rate, aiokafka_ceiling, create_topic, publish
from _latency import CutoffWatcher, LatencyResult, steady_publish, wait_probes
from _procs import Child, Children, faust_ceiling, start_worker, worker_env
from _report import Figure, at_least, below, print_table, record
from _traffic import Traffic, write_budgets
from _watch import Check, settle_checks, wait_final

from spendstream.embedded import EmbeddedBroker, EmbeddedRedis

PER_WORKER_TARGET = 50_000
CEILING_SHARE_TARGET = 0.25
P99_TARGET = 1.0
BYTES_PER_USER_TARGET = 300
FULL_MEMORY_USERS = 1_000_000


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase's names: each phase has its own topic, consumer group, key prefix and
    Redis database (so the first key a worker writes is easy to spot)."""

    topic: str
    app_id: str
    prefix: str
    redis_url: str
    redis: redis.Redis


@dataclass
class Run:
    """What every phase shares: services, children, names, parameters and the outcome."""

    args: argparse.Namespace
    broker: EmbeddedBroker
    store: EmbeddedRedis
    children: Children
    workdir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    figures: list[Figure] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    ceilings: dict[str, float] = field(default_factory=dict)

    phases: dict[str, Phase] = field(default_factory=dict)

    def phase(self, name: str) -> Phase:
        """The topic, app id, Redis prefix and Redis database of this run's phase ``name``."""
        if name not in self.phases:
            base = f"bench-{self.run_id}-{name}"
            url = f"redis://127.0.0.1:{self.store.port}/{len(self.phases) + 1}"
            self.phases[name] = Phase(base, base, base + ":", url, redis.Redis.from_url(url))
        return self.phases[name]

    def worker(self, name: str, phase: Phase, partitions: int, budgets: Path) -> Child:
        """Start one worker for ``phase``; several in one phase share a consumer group."""
        return start_worker(self.children, name, worker_env(
            kafka_url=self.broker.url, redis_url=phase.redis_url, budgets=budgets,
            topic=phase.topic, prefix=phase.prefix, partitions=partitions,
            app_id=phase.app_id, state_dir=self.workdir / f"state-{name}"))

    def close(self) -> None:
        """Close the Redis clients."""
        for phase in self.phases.values():
            phase.redis.close()


def log(message: str) -> None:
    """A progress line, flushed at once (the run takes minutes)."""
    print(message, flush=True)


def publish_bulk(run: Run, topic: str, traffic: Traffic, n: int) -> Rate:
    """Publish ``n`` events of ``traffic``, printing progress every ~100k."""
    def progress(sent: int) -> None:
        if sent % 100_000 == 0:
            log(f"  published {sent:,} of {n:,}")

    rate = asyncio.run(publish(run.broker.bootstrap, topic,
                               (traffic.event() for _ in range(n)), progress))
    log(f"  published {n:,} events at {rate.per_second:,.0f}/s")
    return rate


def measure_ceilings(run: Run, topic: str, partitions: int, n: int, faust: bool) -> None:
    """The plain aiokafka consumer's rate over the topic and, with ``faust``, the bare
    faust agent's; kept in ``run.ceilings`` for the ratios and shown as figures."""
    where = f"{partitions} partitions"
    group = f"bench-{run.run_id}-aiokafka-{partitions}"
    plain = asyncio.run(aiokafka_ceiling(run.broker.bootstrap, topic, n, group)).per_second
    run.ceilings["aiokafka"] = plain
    log(f"  aiokafka ceiling: {plain:,.0f} events/s")
    run.figures.append(Figure(f"aiokafka_ceiling_p{partitions}", f"ceiling: plain aiokafka "
                              f"consumer + orjson, {where}", plain, f"{plain:,.0f} ev/s"))
    if faust:
        rate, startup = faust_ceiling(run.children, kafka_url=run.broker.url, topic=topic,
                                      partitions=partitions, n=n,
                                      app_id=f"bench-{run.run_id}-faust", workdir=run.workdir)
        run.ceilings["faust"] = rate
        log(f"  bare faust agent ceiling: {rate:,.0f} events/s (start-up {startup:.1f}s)")
        run.figures.append(Figure("faust_ceiling", f"ceiling: bare faust agent (take_events + "
                                  f"orjson), {where}", rate, f"{rate:,.0f} ev/s"))


def rate_figures(run: Run, key: str, label: str, rate: float, workers: int) -> None:
    """The worker rate and its ratio to each ceiling."""
    target = PER_WORKER_TARGET * workers
    run.figures.append(at_least(key, label, rate, f"{rate:,.0f} ev/s", target,
                                f"{target:,} ev/s"))
    plain = run.ceilings["aiokafka"]
    share = rate / plain / workers
    run.figures.append(at_least(f"{key}_share_of_aiokafka", f"{label}, per worker / aiokafka "
                                f"ceiling", share, f"{share:.0%}", CEILING_SHARE_TARGET, "25%"))
    if "faust" in run.ceilings:
        share = rate / run.ceilings["faust"] / workers
        run.figures.append(Figure(f"{key}_share_of_faust",
                                  f"{label}, per worker / bare faust ceiling", share,
                                  f"{share:.0%}"))


def throughput_phase(run: Run, budgets: Path, probes: list[str]) -> Child:
    """Bulk publish, both ceilings, then one worker end to end and the exact checks.

    Returns the worker, left running for the latency phase.
    """
    args = run.args
    ph = run.phase("tp")
    topic = ph.topic
    log(f"[throughput] {args.events:,} events, {args.users:,} users, 4 partitions")
    asyncio.run(create_topic(run.broker.bootstrap, topic, 4))
    traffic = Traffic(datetime.now(UTC), users=args.users, capped=args.capped,
                      capped_share=args.capped / max(args.events, 1) * 4, seed=1)
    write_budgets(budgets, traffic.capped, probes)
    published = publish_bulk(run, topic, traffic, args.events)
    run.figures.append(Figure("publish_rate", "publish rate (aiokafka producer)",
                              published.per_second, f"{published.per_second:,.0f} ev/s"))
    measure_ceilings(run, topic, 4, args.events, faust=True)
    expected = traffic.expected()
    ledger = expected.ledger
    log(f"  starting the worker ({len(expected.cutoff)} capped users must be cut off)")
    worker = run.worker("worker-tp", ph, 4, budgets)
    span = wait_final(ph.redis, ph.prefix, expected, worker.check_alive, "worker")
    rate = ledger.total.events / span.seconds
    log(f"  worker: {rate:,.0f} events/s over {span.seconds:.1f}s")
    rate_figures(run, "worker_rate", "worker end to end (1 worker)", rate, 1)
    checks = settle_checks(ph.redis, ph.prefix, expected)
    run.checks += [Check(f"1 worker: {c.name}", c.ok, c.detail) for c in checks]
    return worker


def latency_phase(run: Run, worker: Child, probes: list[str]) -> None:
    """The throughput worker under a steady paced load; probe users' event-to-flag times."""
    args = run.args
    ph = run.phase("tp")
    log(f"[latency] {args.latency_rate:,} events/s for {args.latency_seconds}s, "
        f"{len(probes)} probes")
    traffic = Traffic(datetime.now(UTC), users=args.users, track_users=False, seed=2)
    watcher = CutoffWatcher(ph.redis_url, ph.prefix)
    watcher.start()
    try:
        offered = asyncio.run(steady_publish(run.broker.bootstrap, ph.topic, traffic,
                                             args.latency_rate, args.latency_seconds, probes,
                                             watcher))
        log(f"  offered {offered.per_second:,.0f} events/s; waiting for the last flags")
        wait_probes(watcher, timeout=120.0)
        worker.check_alive()
    finally:
        watcher.stop()
    result = LatencyResult([watcher.latency[u] for u in probes if u in watcher.latency],
                           watcher.pending, offered)
    if result.latencies:
        early, late = result.trend()
        log(f"  median latency of the first tenth of probes {_seconds(early)}, "
            f"of the last tenth {_seconds(late)}")
    p50, p99 = result.percentile(0.50), result.percentile(0.99)
    load = f"at {offered.per_second:,.0f} ev/s"
    run.figures.append(Figure("latency_offered_rate", "latency phase: offered load",
                              offered.per_second, f"{offered.per_second:,.0f} ev/s",
                              f"{args.latency_rate:,} ev/s",
                              offered.per_second >= 0.95 * args.latency_rate))
    run.figures.append(Figure("flag_latency_p50_s", f"event-to-flag p50 {load}", p50,
                              _seconds(p50)))
    run.figures.append(below("flag_latency_p99_s", f"event-to-flag p99 {load} "
                             f"({len(result.latencies)} of {len(probes)} probes flagged)",
                             p99, _seconds(p99), P99_TARGET, "1 s"))
    run.checks.append(Check("every latency probe cut off", result.missing == 0,
                            f"{len(result.latencies)} of {len(probes)} within 120 s"))


def _seconds(s: float) -> str:
    return "never (timeout)" if s == float("inf") else f"{s * 1000:,.0f} ms"


def memory_phase(run: Run, budgets: Path) -> None:
    """A fresh worker's RSS idle (after a warm-up) and with ``--memory-users`` distinct users
    in one day window; bytes per active user, extrapolated to 1M when measured below."""
    args = run.args
    m = args.memory_users
    ph = run.phase("mem")
    topic = ph.topic
    log(f"[memory] {m:,} distinct users, one event each")
    asyncio.run(create_topic(run.broker.bootstrap, topic, 4))
    worker = run.worker("worker-mem", ph, 4, budgets)
    traffic = Traffic(datetime.now(UTC), distinct=True, track_users=False, seed=3,
                      user_prefix="mem")
    warm = 2_000
    publish_bulk(run, topic, traffic, warm)
    wait_final(ph.redis, ph.prefix, traffic.expected(), worker.check_alive, "warm-up")
    baseline = settled_rss(worker)
    log(f"  idle after warm-up: RSS {baseline / 2**20:,.1f} MiB")
    publish_bulk(run, topic, traffic, m)
    wait_final(ph.redis, ph.prefix, traffic.expected(), worker.check_alive, "memory worker")
    after, peak = settled_rss(worker), worker.peak_rss_bytes()
    run.children.stop(worker)
    per_user = (after - baseline) / m
    scope = "" if m >= FULL_MEMORY_USERS else f", measured at {m:,} users"
    run.figures.append(Figure("rss_idle_mib", "worker RSS idle (after warm-up)",
                              baseline / 2**20, f"{baseline / 2**20:,.0f} MiB"))
    run.figures.append(Figure("rss_active_mib", f"worker RSS with {m:,} active users",
                              after / 2**20, f"{after / 2**20:,.0f} MiB (peak "
                              f"{peak / 2**20:,.0f})"))
    if m < FULL_MEMORY_USERS:
        extrapolated = baseline + per_user * FULL_MEMORY_USERS
        run.figures.append(Figure("rss_1m_users_extrapolated_mib",
                                  f"worker RSS at 1M users (EXTRAPOLATED from {m:,})",
                                  extrapolated / 2**20, f"~{extrapolated / 2**20:,.0f} MiB"))
    run.figures.append(below("bytes_per_user", f"bytes per active user{scope}", per_user,
                             f"{per_user:,.0f} B", BYTES_PER_USER_TARGET, "300 B"))
    checks = settle_checks(ph.redis, ph.prefix, traffic.expected())
    run.checks += [Check(f"memory: {c.name}", c.ok, c.detail) for c in checks]


def settled_rss(worker: Child, seconds: float = 3.0) -> int:
    """RSS after ``seconds`` of quiet (pending flag writes and changelog sends drained)."""
    time.sleep(seconds)
    return worker.rss_bytes()


def scale_out_phase(run: Run, budgets: Path) -> None:
    """Two workers in one consumer group on 8 partitions: combined rate, exact totals."""
    args = run.args
    ph = run.phase("two")
    topic = ph.topic
    log(f"[two workers] {args.events:,} events, 8 partitions")
    asyncio.run(create_topic(run.broker.bootstrap, topic, 8))
    traffic = Traffic(datetime.now(UTC), users=args.users, capped=args.capped,
                      capped_share=args.capped / max(args.events, 1) * 4, seed=4)
    write_budgets(budgets, traffic.capped, [])
    publish_bulk(run, topic, traffic, args.events)
    measure_ceilings(run, topic, 8, args.events, faust="faust" not in run.ceilings)
    expected = traffic.expected()
    ledger = expected.ledger
    workers = [run.worker(f"worker-two-{i}", ph, 8, budgets) for i in (1, 2)]

    def alive() -> None:
        for w in workers:
            w.check_alive()

    span = wait_final(ph.redis, ph.prefix, expected, alive, "two workers")
    rate = ledger.total.events / span.seconds
    log(f"  two workers: {rate:,.0f} events/s combined over {span.seconds:.1f}s")
    rate_figures(run, "two_workers_rate", "two workers combined", rate, 2)
    checks = settle_checks(ph.redis, ph.prefix, expected)
    run.checks += [Check(f"2 workers: {c.name}", c.ok, c.detail) for c in checks]
    for w in workers:
        run.children.stop(w)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks every size for a smoke run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("single", "two-workers", "all"), default="all")
    p.add_argument("--events", type=int, help="events per throughput run (300,000)")
    p.add_argument("--users", type=int, help="everyday users (100,000)")
    p.add_argument("--capped", type=int, default=250, help="users in the tiny 'capped' tier")
    p.add_argument("--memory-users", type=int,
                   help="distinct users of the memory phase (1,000,000; below that the "
                        "1M figure is extrapolated and labelled so)")
    p.add_argument("--latency-rate", type=int, default=5_000, help="events/s offered")
    p.add_argument("--latency-seconds", type=float, help="length of the paced load (20)")
    p.add_argument("--probes", type=int, help="latency probes (200)")
    p.add_argument("--quick", action="store_true", help="small sizes, nothing recorded")
    p.add_argument("--no-record", action="store_true", help="do not append to results.jsonl")
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (("events", 300_000, 20_000), ("users", 100_000, 5_000),
                              ("memory_users", FULL_MEMORY_USERS, 20_000),
                              ("latency_seconds", 20.0, 5.0), ("probes", 200, 20)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if quick:
        args.capped = min(args.capped, 50)
    return args


def run_all(run: Run) -> None:
    """The phases the mode asks for, in order (the longest, memory, last)."""
    budgets = run.workdir / "budgets.yaml"
    mode = run.args.mode
    if mode in ("single", "all"):
        probes = [f"probe-{i}" for i in range(run.args.probes)]
        worker = throughput_phase(run, budgets, probes)
        latency_phase(run, worker, probes)
        run.children.stop(worker)
    if mode in ("two-workers", "all"):
        scale_out_phase(run, run.workdir / "budgets-two.yaml")
    if mode in ("single", "all"):
        memory_phase(run, budgets)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 when a total is not exact (or a phase failed), else 0."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="spendstream-bench-"))
    children = Children(workdir)
    with EmbeddedBroker() as broker, EmbeddedRedis() as store:
        run = Run(args, broker, store, children, workdir)
        log(f"run {run.run_id}: mode {args.mode}, logs in {workdir}")
        failure = None
        try:
            run_all(run)
        except (RuntimeError, OSError) as e:
            failure = e
        finally:
            children.stop_all()
            run.close()
    elapsed = time.monotonic() - started
    print()
    print_table(run.figures, run.checks)
    print(f"\n{len(run.checks) - sum(c.ok for c in run.checks)} of {len(run.checks)} exactness "
          f"checks failed; took {elapsed / 60:.1f} min")
    if failure is not None:
        print(f"FAILED: {failure}", file=sys.stderr)
    if not (args.quick or args.no_record or failure):
        record(run.figures, run.checks, _parameters(args, elapsed))
        print("appended to bench/results.jsonl")
    return 1 if failure or not all(c.ok for c in run.checks) else 0


def _parameters(args: argparse.Namespace, elapsed: float) -> dict[str, Any]:
    return {"mode": args.mode, "events": args.events, "users": args.users,
            "memory_users": args.memory_users, "latency_rate": args.latency_rate,
            "latency_seconds": args.latency_seconds, "probes": args.probes,
            "minutes": round(elapsed / 60, 1)}


if __name__ == "__main__":
    sys.exit(main())
