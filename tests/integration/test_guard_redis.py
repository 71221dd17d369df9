"""The guard against a real Redis: each refusal path, warnings, the cache, selection, record."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis

from spendstream.contract.keys import (
    CUTOFF_GLOBAL,
    cutoff_feature,
    cutoff_user,
    spend_user,
    warn_user,
)
from spendstream.domain.budgets import Budgets, parse_budgets
from spendstream.errors import BudgetExceeded, FeatureDisabled, InputTooLong, Throttled
from spendstream.producers import UsageEvent
from spendstream.producers.guard import AsyncGuard, Guard
from spendstream.producers.tokens import count_messages

pytestmark = pytest.mark.integration

BUDGETS = parse_budgets({
    "users": {"default_tier": "free", "tiers": {"free": {"usd": 0.13}, "pro": {"usd": 1}},
              "members": {"acct-9": "pro"}},
    "features": {
        "chat": {"usd": 2000, "max_input_tokens": 4000, "max_output_tokens": 1000,
                 "model": "gpt-4o", "tier_models": {"free": "gpt-4o-mini"}},
        "strict": {"usd": 10, "max_input_tokens": 30, "model": "gpt-4",
                   "on_input_over": "reject"},
        "cut": {"usd": 10, "max_input_tokens": 30, "model": "gpt-4",
                "on_input_over": "truncate"},
    },
})
HELLO = [{"role": "user", "content": "hello"}]


class ListSink:
    """An emitter that keeps what it is given (the guard's only collaborator here)."""

    def __init__(self, accept: bool = True) -> None:
        self.events: list[UsageEvent] = []
        self.accept = accept

    def emit(self, event: UsageEvent) -> bool:
        self.events.append(event)
        return self.accept


def flag(scope: str, subject: str, seconds: int = 3600, **extra: Any) -> bytes:
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))
    return orjson.dumps({"scope": scope, "id": subject, "reason": f"{scope} test flag",
                         "level": "cutoff", "spent": "2.00", "budget": "1.00", "unit": "usd",
                         "window_start": "2026-01-01T00:00:00Z", "window_end": end, **extra})


@pytest.fixture
def prefix(uid: str) -> str:
    return f"ss-{uid}:"


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def guard(redis_url: str, prefix: str, budgets: Budgets = BUDGETS, **kw: Any) -> Guard:
    kw.setdefault("cache_ttl", 0.0)
    return Guard(redis_url, budgets, kw.pop("emitter", None), prefix=prefix, **kw)


# Flag values are built when the test runs: a 60 s window built at collection time has
# ended by then when a few minutes of other tests run first.
@pytest.mark.parametrize(("key", "value", "error", "scope"), [
    (cutoff_user("acct-1"), lambda: flag("user", "acct-1"), BudgetExceeded, "user"),
    (cutoff_feature("chat"), lambda: flag("feature", "chat"), FeatureDisabled, "feature"),
    (CUTOFF_GLOBAL, lambda: flag("global", "daily_cap"), BudgetExceeded, "global"),
    (CUTOFF_GLOBAL, lambda: flag("global", "tpm", 60, unit="tokens"), Throttled, "global"),
])
def test_each_cutoff_refuses_with_its_error(redis_url: str, r: redis.Redis, prefix: str,
                                            key: str, value: Callable[[], bytes],
                                            error: type[Exception], scope: str) -> None:
    g = guard(redis_url, prefix)
    assert g.admit("acct-1", "chat", HELLO).model == "gpt-4o-mini"
    r.set(prefix + key, value(), ex=3600)
    with pytest.raises(error) as e:
        g.admit("acct-1", "chat", HELLO)
    assert e.value.scope == scope  # type: ignore[attr-defined]
    assert e.value.resets_at is not None  # type: ignore[attr-defined]
    # Other users and features are untouched by a user's or a feature's flag.
    if scope == "user":
        assert g.admit("acct-2", "chat", HELLO)
    if scope == "feature":
        assert g.admit("acct-1", "cut", HELLO)


def test_other_prefix_is_not_read(redis_url: str, r: redis.Redis, prefix: str) -> None:
    r.set("other:" + CUTOFF_GLOBAL, flag("global", "daily_cap"), ex=60)
    assert guard(redis_url, prefix).admit("u", "chat", HELLO)


def test_warning_and_remaining_budget_are_exposed(redis_url: str, r: redis.Redis,
                                                  prefix: str) -> None:
    g = guard(redis_url, prefix)
    a = g.admit("acct-1", "chat", HELLO)
    # Nothing spent yet today: the whole budget of the free tier (USD only: no tokens).
    assert a.warning is None and (a.remaining_usd, a.remaining_tokens) == (Decimal("0.13"), None)
    r.set(prefix + warn_user("acct-1"), flag("user", "acct-1", level="warn"), ex=60)
    r.set(prefix + spend_user("acct-1"), orjson.dumps({"spent_usd": "0.104"}), ex=60)
    a = g.admit("acct-1", "chat", HELLO)
    assert a.warning is not None and a.warning["level"] == "warn"
    assert a.remaining_usd == Decimal("0.026")


def test_flags_are_cached_for_the_ttl(redis_url: str, r: redis.Redis, prefix: str) -> None:
    g = guard(redis_url, prefix, cache_ttl=0.5)
    for _ in range(50):
        g.admit("acct-1", "chat", HELLO)
    assert g.stats.redis_reads == 1 and g.stats.cache_hits == 49
    r.set(prefix + cutoff_feature("chat"), flag("feature", "chat"), ex=60)
    assert g.admit("acct-1", "chat", HELLO)  # still the cached answer
    deadline = time.monotonic() + 0.5 + 1.0
    while time.monotonic() < deadline:
        try:
            g.admit("acct-1", "chat", HELLO)
        except FeatureDisabled:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the cached flags were never refreshed")
    assert g.stats.redis_reads == 2


def test_model_max_tokens_and_tier(redis_url: str, prefix: str) -> None:
    g = guard(redis_url, prefix)
    free = g.admit("acct-1", "chat", HELLO)
    assert (free.model, free.max_tokens, free.tier) == ("gpt-4o-mini", 1000, "free")
    pro = g.admit("acct-9", "chat", HELLO, max_tokens=200)
    assert (pro.model, pro.max_tokens, pro.tier) == ("gpt-4o", 200, "pro")
    over = g.admit("acct-9", "chat", HELLO, max_tokens=5000, model="o3")
    assert (over.model, over.max_tokens) == ("o3", 1000)
    told = g.admit("acct-1", "chat", HELLO, tier="pro")
    assert told.model == "gpt-4o"
    assert free.input_tokens_local == count_messages(HELLO, "gpt-4o-mini").tokens


def test_input_reject_and_truncate(redis_url: str, prefix: str) -> None:
    g = guard(redis_url, prefix)
    long = [{"role": "user", "content": "word " * 100}]
    with pytest.raises(InputTooLong):
        g.admit("acct-1", "strict", long)
    a = g.admit("acct-1", "cut", long)
    assert a.trimmed and a.input_tokens_local <= 30
    assert count_messages(a.messages, "gpt-4").tokens == a.input_tokens_local
    chat = [{"role": "system", "content": "be kind"},
            *[{"role": "user", "content": f"turn {i} " * 200} for i in range(10)],
            {"role": "user", "content": "and now?"}]
    t = g.admit("acct-1", "chat", chat)
    assert t.trimmed and t.messages[0] == chat[0] and t.messages[-1] == chat[-1]
    assert t.input_tokens_local <= 4000 < count_messages(chat, "gpt-4o-mini").tokens


def test_rate_limit_refuses_over_the_limit(redis_url: str, prefix: str) -> None:
    g = guard(redis_url, prefix, rate_limit_per_minute=3)
    for _ in range(3):
        g.admit("acct-1", "chat", HELLO)
    with pytest.raises(Throttled) as e:
        g.admit("acct-1", "chat", HELLO)
    assert e.value.unit == "requests" and e.value.budget == 3 and e.value.resets_at
    assert g.admit("acct-2", "chat", HELLO)  # per user


def test_record_emits_the_event(redis_url: str, prefix: str) -> None:
    sink = ListSink()
    g = guard(redis_url, prefix, emitter=sink)
    a = g.admit("acct-1", "chat", HELLO)
    ev = g.record(a, provider="openai", input_tokens=12, output_tokens=1000,
                  finish_reason="length")
    g.record(a, provider="openai", input_tokens=0, output_tokens=0, status="error")
    g.record(a, provider="openai", input_tokens=12, output_tokens=40, estimated=True,
             model="gpt-4o-mini-2024-07-18")
    assert sink.events[0] is ev
    assert (ev.user_id, ev.feature, ev.model, ev.provider) == ("acct-1", "chat",
                                                               "gpt-4o-mini", "openai")
    assert ev.local_input_tokens == a.input_tokens_local and ev.cost_usd is None
    assert sink.events[1].status == "error"
    assert sink.events[2].estimated and sink.events[2].model == "gpt-4o-mini-2024-07-18"
    assert g.stats.length_finishes == {"chat": 1} and g.stats.emitted == 3
    rejecting = guard(redis_url, prefix, emitter=ListSink(accept=False))
    rejecting.record(a, provider=None, input_tokens=1, output_tokens=1)
    assert rejecting.stats.emit_rejected == 1


async def test_async_guard_refuses_and_admits(redis_url: str, r: redis.Redis,
                                              prefix: str) -> None:
    sink = ListSink()
    g = AsyncGuard(redis_url, BUDGETS, sink, prefix=prefix, cache_ttl=0.0,
                   rate_limit_per_minute=2)
    a = await g.admit("acct-9", "chat", HELLO)
    assert a.model == "gpt-4o" and a.max_tokens == 1000
    g.record(a, provider="openai", input_tokens=5, output_tokens=5)
    assert len(sink.events) == 1
    r.set(prefix + cutoff_user("acct-9"), flag("user", "acct-9"), ex=60)
    with pytest.raises(BudgetExceeded):
        await g.admit("acct-9", "chat", HELLO)
    await g.admit("acct-8", "chat", HELLO)
    await g.admit("acct-8", "chat", HELLO)
    with pytest.raises(Throttled):
        await g.admit("acct-8", "chat", HELLO)
    await g.aclose()
