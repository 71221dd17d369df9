"""The worker's metrics and health endpoints, over plain counters (no Kafka)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from aiohttp import ClientSession

from spendstream.embedded import free_port
from spendstream.streams.observe import BatchTimer, Health, ObservabilityServer, Sources
from spendstream.streams.stages import Counters
from tests.helpers import metric


@dataclass
class Stats:
    written: int = 7
    errors: int = 2


@dataclass
class Flags:
    stats: Stats = field(default_factory=Stats)
    pending: int = 3
    healthy: bool = False


@dataclass
class Dispatcher:
    sent: int = 4
    failed: int = 1
    pending: int = 0


def sources(health: Health) -> Sources:
    counters = Counters(events=10, duplicates=2, late=1, dead_letters=3, unpriced=5, alerts=6)
    counters.calls.update({("faq", False): 6, ("faq", True): 2, ("chat", False): 2})
    batches = BatchTimer()
    for seconds in (0.0005, 0.02, 0.02, 30.0):
        batches.observe(seconds)
    return Sources(counters, Flags(), Dispatcher(), batches, lag=lambda: {0: 5, 1: 0},
                   feature_spend=lambda: {"chat": (Decimal("1.25"), Decimal("2")),
                                          "free": (Decimal("0.5"), None)},
                   health=lambda: health)


async def test_metrics_text_and_health() -> None:
    port = free_port()
    server = ObservabilityServer(sources(Health(False, "recovering state", (0,))), port,
                                 host="127.0.0.1")
    assert await server.start()
    try:
        async with ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 503
                assert await r.json() == {"ready": False, "reason": "recovering state",
                                          "partitions": [0]}
            async with http.get(f"http://127.0.0.1:{port}/livez") as r:
                assert r.status == 200
    finally:
        await server.stop()
    expected = {"spendstream_events_counted_total": 10, "spendstream_duplicates_total": 2,
                "spendstream_late_total": 1, "spendstream_dead_letters_total": 3,
                "spendstream_unpriced_total": 5, "spendstream_alerts_total": 6,
                "spendstream_alerts_sent_total": 4, "spendstream_alerts_failed_total": 1,
                "spendstream_flag_writes_total": 7, "spendstream_redis_errors_total": 2,
                "spendstream_flag_writes_pending": 3, "spendstream_redis_up": 0,
                "spendstream_ready": 0, "spendstream_batch_seconds_count": 4,
                "spendstream_alerts_pending": 0}
    assert {name: metric(text, name) for name in expected} == expected
    assert metric(text, "spendstream_batch_seconds_bucket", le="0.001") == 1
    assert metric(text, "spendstream_batch_seconds_bucket", le="0.025") == 3
    assert metric(text, "spendstream_batch_seconds_bucket", le="10.0") == 3
    assert metric(text, "spendstream_batch_seconds_bucket", le="+Inf") == 4
    assert metric(text, "spendstream_consumer_lag", partition="0") == 5
    assert metric(text, "spendstream_feature_spend_usd", feature="chat") == 1.25
    assert metric(text, "spendstream_feature_remaining_usd", feature="chat") == 0.75
    assert metric(text, "spendstream_feature_remaining_usd", feature="free") is None
    # Per feature: calls and response-cache hits (chat never hit: 0, so a ratio is defined).
    assert metric(text, "spendstream_calls_total", feature="faq") == 8
    assert metric(text, "spendstream_cache_hits_total", feature="faq") == 2
    assert metric(text, "spendstream_calls_total", feature="chat") == 2
    assert metric(text, "spendstream_cache_hits_total", feature="chat") == 0


async def test_a_busy_port_is_reported_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ObservabilityServer(sources(Health(True, "counting")), port, host="127.0.0.1")
        assert not await server.start()
    assert "SPENDSTREAM_METRICS_PORT" in caplog.text
    await server.stop()
