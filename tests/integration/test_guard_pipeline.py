"""With a cold flag cache the guard reads flags and takes the rate in one pipeline."""

from __future__ import annotations

import pytest

from spendstream.domain.budgets import parse_budgets
from spendstream.errors import Throttled
from spendstream.producers.guard import AsyncGuard, Guard

pytestmark = pytest.mark.integration

BUDGETS = parse_budgets({"features": {"chat": {"model": "gpt-4"}}})
MESSAGES = [{"role": "user", "content": "hi"}]


def test_sync_cold_cache_rate_limit_holds(redis_url, uid):
    guard = Guard(redis_url, BUDGETS, cache_ttl=0, rate_limit_per_minute=3, prefix=f"{uid}:")
    outcomes = []
    for _ in range(5):
        try:
            guard.admit("u", "chat", MESSAGES)
            outcomes.append("ok")
        except Throttled:
            outcomes.append("throttled")
    guard.close()
    assert outcomes == ["ok"] * 3 + ["throttled"] * 2
    assert guard.stats.redis_reads == 5 and guard.stats.cache_hits == 0


async def test_async_cold_cache_rate_limit_holds(redis_url, uid):
    guard = AsyncGuard(redis_url, BUDGETS, cache_ttl=0, rate_limit_per_minute=3,
                       prefix=f"{uid}:")
    outcomes = []
    for _ in range(5):
        try:
            await guard.admit("u", "chat", MESSAGES)
            outcomes.append("ok")
        except Throttled:
            outcomes.append("throttled")
    await guard.aclose()
    assert outcomes == ["ok"] * 3 + ["throttled"] * 2
