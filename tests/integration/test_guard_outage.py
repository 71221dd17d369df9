"""Redis stopped under the guard: fail open (warn once, count) or fail closed; never hang.

Each test starts and stops its own Redis; the session's server is left alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import redis

from spendstream.contract.keys import cutoff_user
from spendstream.domain.budgets import parse_budgets
from spendstream.embedded import EmbeddedRedis
from spendstream.errors import BudgetExceeded, ServiceUnavailable
from spendstream.producers.guard import AsyncGuard, Guard

pytestmark = [pytest.mark.integration, pytest.mark.fault]

BUDGETS = parse_budgets({"features": {"chat": {"model": "gpt-4o", "max_output_tokens": 100}}})
HELLO = [{"role": "user", "content": "hello"}]
CUTOFF = (b'{"scope": "user", "id": "blocked", "reason": "daily budget", "spent": "2", '
          b'"budget": "1", "unit": "usd", "window_end": "2999-01-01T00:00:00Z"}')


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    server.start()
    yield server
    server.stop()


def _timed(fn: object) -> float:
    start = time.monotonic()
    fn()  # type: ignore[operator]
    return time.monotonic() - start


def test_fail_open_lets_calls_through_warns_once_and_counts(
        own_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture, uid: str) -> None:
    g = Guard(own_redis.url, BUDGETS, prefix=uid, cache_ttl=0.0, rate_limit_per_minute=100,
              retry_interval=0.05)
    redis.Redis.from_url(own_redis.url).set(uid + cutoff_user("blocked"), CUTOFF)
    g.admit("u1", "chat", HELLO)
    with pytest.raises(BudgetExceeded):
        g.admit("blocked", "chat", HELLO)
    own_redis.stop()
    caplog.set_level(logging.WARNING, logger="spendstream.guard")
    for i in range(30):
        elapsed = _timed(lambda: g.admit("u1", "chat", HELLO))
        assert elapsed < 1.0  # short timeouts: never hangs on a dead Redis
        if i % 10 == 0:
            time.sleep(0.06)  # past retry_interval: Redis is tried again, and fails again
    assert g.stats.failed_open == 30
    assert g.stats.redis_errors >= 3 and g.stats.outages == 1
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "fail open" in warnings[0].getMessage()
    # Flags already read still apply during the outage.
    with pytest.raises(BudgetExceeded):
        g.admit("blocked", "chat", HELLO)


def test_fail_open_recovers_when_redis_returns(uid: str, caplog: pytest.LogCaptureFixture
                                               ) -> None:
    server = EmbeddedRedis()
    server.start()
    port = server.port
    g = Guard(server.url, BUDGETS, prefix=uid, cache_ttl=0.0, retry_interval=0.0)
    g.admit("u1", "chat", HELLO)
    server.stop()
    g.admit("u1", "chat", HELLO)
    assert g.stats.failed_open == 1
    server = EmbeddedRedis(port=port)
    server.start()
    try:
        redis.Redis.from_url(server.url).set(uid + cutoff_user("u1"),
                                              CUTOFF.replace(b"blocked", b"u1"))
        with pytest.raises(BudgetExceeded):
            g.admit("u1", "chat", HELLO)
        assert g.stats.failed_open == 1
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()


def test_fail_closed_raises_service_unavailable(own_redis: EmbeddedRedis, uid: str) -> None:
    g = Guard(own_redis.url, BUDGETS, prefix=uid, cache_ttl=0.0, fail_closed=True)
    g.admit("u1", "chat", HELLO)
    own_redis.stop()
    for _ in range(5):
        start = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="fail closed"):
            g.admit("u1", "chat", HELLO)
        assert time.monotonic() - start < 1.0
    assert g.stats.failed_open == 0 and g.stats.redis_errors >= 1


def test_fail_closed_on_a_redis_that_never_was(uid: str) -> None:
    from spendstream.embedded import free_port

    g = Guard(f"redis://127.0.0.1:{free_port()}/0", BUDGETS, prefix=uid, fail_closed=True)
    with pytest.raises(ServiceUnavailable):
        g.admit("u1", "chat", HELLO)


async def test_async_guard_fails_open_and_closed(own_redis: EmbeddedRedis, uid: str) -> None:
    opened = AsyncGuard(own_redis.url, BUDGETS, prefix=uid, cache_ttl=0.0,
                        rate_limit_per_minute=5)
    closed = AsyncGuard(own_redis.url, BUDGETS, prefix=uid, cache_ttl=0.0, fail_closed=True)
    await opened.admit("u1", "chat", HELLO)
    await closed.admit("u1", "chat", HELLO)
    own_redis.stop()
    start = time.monotonic()
    a = await opened.admit("u1", "chat", HELLO)
    assert a.model == "gpt-4o" and opened.stats.failed_open == 1
    with pytest.raises(ServiceUnavailable):
        await closed.admit("u1", "chat", HELLO)
    assert time.monotonic() - start < 2.0
