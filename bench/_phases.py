"""The benchmark's phases: throughput (with both ceilings), latency, memory, scale-out.

Each phase has its own topic, consumer group, Redis key prefix and Redis database, starts
its workers as black-box subprocesses and adds figures and exactness checks to the run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis
from _kafka import (
    BackgroundPublish,
    Rate,
    aiokafka_ceiling,
    create_topic,
    publish,
    wait_group,
)
from _latency import CutoffWatcher, LatencyResult, steady_publish, wait_probes
from _procs import Child, Children, faust_ceiling, start_worker, worker_env
from _report import Figure, at_least, below
from _traffic import Expected, Traffic, write_budgets
from _watch import Check, settle_checks, wait_final

from spendstream.embedded import EmbeddedBroker, EmbeddedRedis

PER_WORKER_TARGET = 50_000
"""Issue 11: events/s of one worker on packed records (the SDK's form)..."""
PER_WORKER_TARGET_SINGLE = 25_000
"""... and on one event per record (``--single``)."""
CEILING_SHARE_TARGET = 0.25
"""Or this share of the plain aiokafka consumer's rate on the same broker, in the same run."""
P99_TARGET = 0.5
BYTES_PER_USER_TARGET = 300
FULL_MEMORY_USERS = 1_000_000
MEMORY_USERS = 200_000
"""The memory phase's default: the current worker slows down as its state grows (minutes
for 1M users), so by default bytes per user are measured at 200k and the 1M figure is
extrapolated (and labelled so); ``--memory-users 1000000`` measures it."""


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
    worker_rate: float = 0.0
    """The throughput phase's worker rate (events/s), for the ledger phase's target."""
    expected: Expected | None = None
    """The throughput phase's exact sums, for the ledger phase's checks."""

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
        env = worker_env(
            kafka_url=self.broker.url, redis_url=phase.redis_url, budgets=budgets,
            topic=phase.topic, prefix=phase.prefix, partitions=partitions,
            app_id=phase.app_id, state_dir=self.workdir / f"state-{name}",
            database_url=self.args.ledger_url if self.args.ledger_in_worker else None)
        for setting in self.args.worker_env:  # --worker-env NAME=VALUE, to try a setting
            key, _, value = setting.partition("=")
            env[key] = value
        return start_worker(self.children, name, env)

    def close(self) -> None:
        """Close the Redis clients."""
        for phase in self.phases.values():
            phase.redis.close()


def log(message: str) -> None:
    """A progress line, flushed at once (the run takes minutes)."""
    print(message, flush=True)


def _progress(n: int) -> Callable[[int], None]:
    def progress(sent: int) -> None:
        if sent % 100_000 == 0:
            log(f"  published {sent:,} of {n:,}")
    return progress


def publish_bulk(run: Run, topic: str, traffic: Traffic, n: int) -> Rate:
    """Publish ``n`` events of ``traffic``, printing progress every ~100k."""
    rate = asyncio.run(publish(run.broker.bootstrap, topic,
                               (traffic.event() for _ in range(n)), _progress(n),
                               packed=not run.args.single))
    log(f"  published {n:,} events at {rate.per_second:,.0f}/s")
    return rate


def start_publishing(run: Run, topic: str, traffic: Traffic, n: int) -> BackgroundPublish:
    """Start publishing ``n`` events of ``traffic`` in a thread; the caller watches Redis."""
    publisher = BackgroundPublish(run.broker.bootstrap, topic,
                                  (traffic.event() for _ in range(n)), _progress(n),
                                  packed=not run.args.single)
    publisher.start()
    return publisher


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
    target = (PER_WORKER_TARGET_SINGLE if run.args.single else PER_WORKER_TARGET) * workers
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
    span = wait_final(ph.redis, ph.prefix, expected, args.events, worker.check_alive, "worker")
    rate = ledger.total.events / span.seconds
    log(f"  worker: {rate:,.0f} events/s over {span.seconds:.1f}s")
    rate_figures(run, "worker_rate", "worker end to end (1 worker)", rate, 1)
    run.worker_rate, run.expected = rate, expected
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
                                             watcher, packed=not args.single))
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
                             p99, _seconds(p99), P99_TARGET, "500 ms"))
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
    wait_final(ph.redis, ph.prefix, traffic.expected(), warm, worker.check_alive, "warm-up")
    baseline = settled_rss(worker)
    log(f"  idle after warm-up: RSS {baseline / 2**20:,.1f} MiB")
    publisher = start_publishing(run, topic, traffic, m)

    def alive() -> None:
        publisher.check()
        worker.check_alive()

    wait_final(ph.redis, ph.prefix, traffic.expected(), warm + m, alive, "memory worker",
               lambda: f"RSS {worker.rss_bytes() / 2**20:,.0f} MiB")
    publisher.result()
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
    """Two workers in one consumer group on 8 partitions: combined rate, exact totals.

    The workers join first and the events follow (a worker joining mid-backlog would put a
    rebalance inside the measurement); the ceilings read the same topic afterwards.
    """
    args = run.args
    ph = run.phase("two")
    log(f"[two workers] {args.events:,} events, 8 partitions")
    asyncio.run(create_topic(run.broker.bootstrap, ph.topic, 8))
    traffic = Traffic(datetime.now(UTC), users=args.users, capped=args.capped,
                      capped_share=args.capped / max(args.events, 1) * 4, seed=4)
    write_budgets(budgets, traffic.capped, [])
    workers = [run.worker(f"worker-two-{i}", ph, 8, budgets) for i in (1, 2)]
    asyncio.run(wait_group(run.broker.bootstrap, ph.app_id, 2))
    log("  both workers joined; publishing")

    publisher = start_publishing(run, ph.topic, traffic, args.events)

    def alive() -> None:
        publisher.check()
        for w in workers:
            w.check_alive()

    expected = traffic.expected()
    span = wait_final(ph.redis, ph.prefix, expected, args.events, alive, "two workers")
    log(f"  published at {publisher.result().per_second:,.0f} events/s while the workers read")
    rate = expected.ledger.total.events / span.seconds
    log(f"  two workers: {rate:,.0f} events/s combined over {span.seconds:.1f}s")
    checks = settle_checks(ph.redis, ph.prefix, expected)
    run.checks += [Check(f"2 workers: {c.name}", c.ok, c.detail) for c in checks]
    for w in workers:
        run.children.stop(w)
    measure_ceilings(run, ph.topic, 8, args.events, faust="faust" not in run.ceilings)
    rate_figures(run, "two_workers_rate", "two workers combined", rate, 2)
