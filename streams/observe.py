"""The worker's ``/metrics`` (Prometheus text format), ``/healthz`` and ``/livez``.

Nothing is counted here: the stages, the flag sink and the dispatcher keep plain integer
counters, and a collector reads them when Prometheus scrapes, so metrics cost nothing on
the per-event path. ``/healthz`` answers 200 only while the worker holds partitions of
the usage topic, its state is recovered and it is not rebalancing; 503 otherwise, with
the reason, so an orchestrator neither routes to nor waits on a worker that is not
counting. ``/livez`` answers 200 while the event loop runs (a worker with no partitions,
one of more workers than partitions, is alive but not ready).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("spendstream.worker")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the batch-latency histogram."""


@dataclass(slots=True)
class BatchTimer:
    """A histogram of batch processing times, kept as plain counts (no lock: one loop)."""

    buckets: tuple[float, ...] = BATCH_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one batch that took ``seconds``."""
        self.total += seconds
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: cumulative counts by upper bound, ``+Inf`` last."""
        out, running = [], 0
        for bound, n in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(frozen=True, slots=True)
class Health:
    """Whether the worker is counting, and why not."""

    ready: bool
    reason: str
    partitions: tuple[int, ...] = ()


@dataclass(slots=True)
class Sources:
    """Where the collector reads from; each is a zero-argument callable or an object with
    plain counters, so it is testable without Kafka."""

    counters: Any
    """:class:`~spendstream.streams.stages.Counters`."""
    flags: Any
    """The flag sink: ``stats.written``, ``stats.errors``, ``pending``, ``healthy``."""
    dispatcher: Any
    """The alert dispatcher: ``sent``, ``failed``, ``pending``."""
    batches: BatchTimer
    lag: Callable[[], Mapping[int, int]]
    """Records not yet counted per usage partition (high watermark minus next offset)."""
    feature_spend: Callable[[], Mapping[str, tuple[Decimal, Decimal | None]]]
    """Each feature's spend in its current period, and its budget (None: no USD budget)."""
    health: Callable[[], Health]


class WorkerCollector(Collector):
    """Reads the worker's counters at scrape time."""

    def __init__(self, sources: Sources) -> None:
        self.s = sources

    def collect(self) -> Iterator[Any]:
        """One metric family per figure, prefix ``spendstream_``."""
        c, f, d = self.s.counters, self.s.flags, self.s.dispatcher
        for name, doc, value in (
            ("events_counted", "usage events counted", c.events),
            ("duplicates", "redelivered or retried events skipped by event_id", c.duplicates),
            ("late", "events later than the grace period (counted as late)", c.late),
            ("dead_letters", "messages sent to the dead-letter topic", c.dead_letters),
            ("unpriced", "events with no price for their model", c.unpriced),
            ("alerts", "alerts raised (state transitions)", c.alerts),
            ("grants", "grants and unblocks applied", c.grants),
            ("alerts_sent", "alerts delivered to the notifier", d.sent),
            ("alerts_failed", "alerts the notifier could not deliver", d.failed),
            ("flag_writes", "flag and live-spend keys written to Redis", f.stats.written),
            ("redis_errors", "failed flushes to Redis", f.stats.errors),
        ):
            yield CounterMetricFamily(f"spendstream_{name}", doc, value=value)
        yield GaugeMetricFamily("spendstream_flag_writes_pending",
                                "keys waiting for Redis", value=f.pending)
        yield GaugeMetricFamily("spendstream_alerts_pending", "alerts waiting for delivery",
                                value=d.pending)
        yield GaugeMetricFamily("spendstream_redis_up", "1 while Redis answers",
                                value=1 if f.healthy else 0)
        health = self.s.health()
        yield GaugeMetricFamily("spendstream_ready", "1 while the worker is counting",
                                value=1 if health.ready else 0)
        lag = GaugeMetricFamily("spendstream_consumer_lag",
                                "usage records fetched by the broker's count but not yet "
                                "counted, per partition", labels=["partition"])
        for partition, n in sorted(self.s.lag().items()):
            lag.add_metric([str(partition)], n)
        yield lag
        b = self.s.batches
        batch = HistogramMetricFamily("spendstream_batch_seconds",
                                      "time to count one batch of usage records")
        batch.add_metric([], b.cumulative(), sum_value=b.total)
        yield batch
        spend = GaugeMetricFamily("spendstream_feature_spend_usd",
                                  "spend of each feature in its current period",
                                  labels=["feature"])
        remaining = GaugeMetricFamily("spendstream_feature_remaining_usd",
                                      "budget left of each feature in its current period",
                                      labels=["feature"])
        for feature, (usd, budget) in sorted(self.s.feature_spend().items()):
            spend.add_metric([feature], float(usd))
            if budget is not None:
                remaining.add_metric([feature], float(budget - usd))
        yield spend
        yield remaining
        calls = CounterMetricFamily("spendstream_calls", "usage events counted per feature",
                                    labels=["feature"])
        hits = CounterMetricFamily("spendstream_cache_hits",
                                   "calls answered from the response cache per feature "
                                   "(hit rate: cache_hits / calls)", labels=["feature"])
        for feature, (n, k) in sorted(c.by_feature().items()):
            calls.add_metric([feature], n)
            hits.add_metric([feature], k)
        yield calls
        yield hits


class ObservabilityServer:
    """``/metrics`` and ``/healthz`` on ``port`` (aiohttp), started with the worker.

    A port already in use is logged, not fatal: counting matters more than being watched.
    """

    def __init__(self, sources: Sources, port: int, host: str = "0.0.0.0") -> None:
        self.sources, self.port, self.host = sources, port, host
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(WorkerCollector(sources))
        self._runner: web.AppRunner | None = None

    async def start(self) -> bool:
        """Listen; False (logged) when the port cannot be bound."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._livez)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as e:
            await runner.cleanup()
            log.error("metrics: cannot listen on port %d (%s); set SPENDSTREAM_METRICS_PORT "
                      "to a free port. The worker goes on counting without /metrics.",
                      self.port, e.strerror or e)
            return False
        self._runner = runner
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)
        return True

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE})

    async def _livez(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})  # the event loop answers

    async def _healthz(self, request: web.Request) -> web.Response:
        h = self.sources.health()
        return web.json_response({"ready": h.ready, "reason": h.reason,
                                  "partitions": list(h.partitions)},
                                 status=200 if h.ready else 503)
