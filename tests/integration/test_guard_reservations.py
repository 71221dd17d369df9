"""Pre-call reservations: admit holds each call's worst-case cost in Redis (shared by
replicas) and refuses when spent + reserved + this call would pass the user's daily budget
or the global daily cap; record settles the hold to the actual cost; a hold never recorded
expires."""

from __future__ import annotations

import time
from decimal import Decimal

import orjson
import pytest
import redis

from spendstream.contract.keys import reserved_user, spend_global, spend_user
from spendstream.domain.budgets import parse_budgets
from spendstream.errors import BudgetExceeded, ConfigError
from spendstream.producers.guard import AsyncGuard, Guard
from spendstream.producers.reservations import NANO
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "hi"}]


def budgets(**reservations: object) -> object:
    return parse_budgets({
        "users": {"tiers": {"free": {"usd": "0.01"}, "tokens": {"tokens": 1000}},
                  "members": {"acct-t": "tokens"}},
        "features": {"chat": {"model": "gpt-4o", "max_output_tokens": 500}},
        "prices": {"gpt-4o": {"input": "2.50", "output": "10.00"}},
        "reservations": reservations,
    })


def reserved(r: redis.Redis, prefix: str, user: str) -> Decimal:
    total = r.hget(prefix + reserved_user(user), "_total")
    return Decimal(int(total or 0)) / NANO


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def test_calls_in_flight_count_against_the_budget(redis_url: str, r: redis.Redis,
                                                  uid: str) -> None:
    prefix = f"res-{uid}:"
    a, b = (Guard(redis_url, budgets(), prefix=prefix, cache_ttl=0.0) for _ in range(2))
    r.set(prefix + spend_user("acct-1"), orjson.dumps({"spent_usd": "0.002"}), ex=60)
    first = a.admit("acct-1", "chat", HELLO)
    assert first.reservation is not None
    estimate = first.reservation.estimate
    # The worst case: the counted prompt plus 500 output tokens at the override prices.
    assert estimate == (first.input_tokens_local * Decimal("2.50") + 500 * Decimal("10.00")
                        ) / 1_000_000
    assert reserved(r, prefix, "acct-1") == estimate
    with pytest.raises(BudgetExceeded) as e:  # the other replica sees the first in flight
        b.admit("acct-1", "chat", HELLO)
    err = e.value
    assert (err.scope, err.subject, err.unit, err.budget) == ("user", "acct-1", "usd",
                                                              Decimal("0.01"))
    assert err.spent == Decimal("0.002") + estimate
    assert "reserved by calls in flight" in str(err) and err.resets_at is not None

    # Recorded with what it really used, the hold shrinks to the actual cost.
    a.record(first, provider="openai", input_tokens=first.input_tokens_local,
             output_tokens=10)
    actual = (first.input_tokens_local * Decimal("2.50") + 10 * Decimal("10.00")) / 1_000_000
    assert reserved(r, prefix, "acct-1") == actual
    second = b.admit("acct-1", "chat", HELLO)
    # A failed call costs nothing: its hold is released.
    b.record(second, provider="openai", input_tokens=0, output_tokens=0, status="error")
    assert reserved(r, prefix, "acct-1") == actual
    for g in (a, b):
        g.close()


def test_a_hold_never_recorded_expires_and_a_settled_one_after_the_hold(
        redis_url: str, r: redis.Redis, uid: str) -> None:
    prefix = f"exp-{uid}:"
    g = Guard(redis_url, budgets(ttl=0.3, hold=0.3), prefix=prefix, cache_ttl=0.0)
    g.admit("acct-1", "chat", HELLO)  # the process "dies": never recorded
    with pytest.raises(BudgetExceeded):
        g.admit("acct-1", "chat", HELLO)
    wait_until(lambda: _admits(g, "acct-1"), 5, "the abandoned hold expired")
    assert reserved(r, prefix, "acct-1") > 0  # the new call's own hold
    g.close()


def _admits(g: Guard, user: str) -> bool:
    try:
        g.admit(user, "chat", HELLO)
    except BudgetExceeded:
        time.sleep(0.02)
        return False
    return True


def test_the_global_daily_cap_counts_every_users_calls_in_flight(
        redis_url: str, r: redis.Redis, uid: str) -> None:
    prefix = f"glob-{uid}:"
    b = parse_budgets({"features": {"chat": {"model": "gpt-4o", "max_output_tokens": 500}},
                       "prices": {"gpt-4o": {"input": "2.50", "output": "10.00"}},
                       "global": {"daily_usd": "0.02"}, "reservations": {}})
    g = Guard(redis_url, b, prefix=prefix, cache_ttl=0.0)
    r.set(prefix + spend_global("day"), orjson.dumps({"spent_usd": "0.009"}), ex=60)
    g.admit("u1", "chat", HELLO)  # ~0.005 each: 0.009 + 0.005 + 0.005 < 0.02
    g.admit("u2", "chat", HELLO)
    with pytest.raises(BudgetExceeded, match="global daily budget") as e:
        g.admit("u3", "chat", HELLO)
    assert (e.value.scope, e.value.subject) == ("global", "daily_cap")
    g.close()


def test_token_only_tiers_and_unpriced_models(redis_url: str, uid: str) -> None:
    g = Guard(redis_url, budgets(), prefix=f"tok-{uid}:", cache_ttl=0.0)
    assert g.admit("acct-t", "chat", HELLO).reservation is None  # no USD budget to hold
    with pytest.raises(ConfigError, match="model 'my-finetune' has no price"):
        g.admit("acct-1", "chat", HELLO, model="my-finetune")
    g.close()


async def test_the_async_guard_reserves_and_settles(redis_url: str, r: redis.Redis,
                                                    uid: str) -> None:
    prefix = f"ares-{uid}:"
    g = AsyncGuard(redis_url, budgets(), prefix=prefix, cache_ttl=0.0)
    a = await g.admit("acct-1", "chat", HELLO)
    assert a.reservation is not None and reserved(r, prefix, "acct-1") == a.reservation.estimate
    g.record(a, provider="openai", input_tokens=0, output_tokens=0, status="error")
    await g.aclose()  # awaits the settlement
    assert reserved(r, prefix, "acct-1") == 0
