"""Limits per feature and per tier from the budgets file (requests and tokens per minute,
per user), shared by replicas through one Lua script; a refusal names the limit and when
it frees up."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from spendstream.domain.budgets import parse_budgets
from spendstream.errors import Throttled
from spendstream.producers.guard import AsyncGuard, Guard
from spendstream.producers.tokens import count_messages

pytestmark = pytest.mark.integration

BUDGETS = parse_budgets({
    "users": {"tiers": {"free": {"usd": 1, "limits": {"rpm": 5, "tpm": 1000}},
                        "pro": {"usd": 10}},
              "members": {"acct-pro": "pro"}},
    "features": {
        "chat": {"model": "gpt-4o-mini", "max_output_tokens": 100, "limits": {"rpm": 3}},
        "search": {"model": "gpt-4o-mini", "max_output_tokens": 100},
        "essay": {"model": "gpt-4o-mini", "max_output_tokens": 2000},
    },
})
HELLO = [{"role": "user", "content": "hi"}]


def replicas(redis_url: str, uid: str, n: int = 2) -> list[Guard]:
    return [Guard(redis_url, BUDGETS, prefix=f"lim-{uid}:", cache_ttl=0.0) for _ in range(n)]


def test_a_feature_limit_is_shared_by_replicas_and_says_when_it_frees(redis_url: str,
                                                                      uid: str) -> None:
    a, b = replicas(redis_url, uid)
    a.admit("acct-pro", "chat", HELLO)
    b.admit("acct-pro", "chat", HELLO)
    a.admit("acct-pro", "chat", HELLO)
    with pytest.raises(Throttled) as e:
        b.admit("acct-pro", "chat", HELLO)
    err = e.value
    assert (err.scope, err.subject, err.unit, err.budget, err.spent) == (
        "feature", "chat", "requests", 3, 3)
    assert "feature chat's limit of 3 requests per minute is reached" in str(err)
    now = datetime.now(UTC)
    assert err.resets_at is not None and now < err.resets_at <= now + timedelta(seconds=61)
    assert f"frees up at {err.resets_at:%H:%M:%S} UTC" in str(err)
    # Another feature of the same user, and the same feature for another user, are free.
    a.admit("acct-pro", "search", HELLO)
    a.admit("acct-other-pro", "chat", HELLO)
    for g in (a, b):
        g.close()


def test_the_tiers_limits_span_features(redis_url: str, uid: str) -> None:
    a, b = replicas(redis_url, uid)
    per_call = count_messages(HELLO, "gpt-4o-mini").tokens + 100
    a.admit("acct-1", "search", HELLO)
    b.admit("acct-1", "chat", HELLO)
    a.admit("acct-1", "search", HELLO)
    b.admit("acct-1", "chat", HELLO)
    a.admit("acct-1", "search", HELLO)
    with pytest.raises(Throttled) as e:  # the free tier's 5 requests, across features
        b.admit("acct-1", "search", HELLO)
    assert (e.value.scope, e.value.subject, e.value.unit) == ("tier", "free", "requests")
    # The tier's 1000 tokens a minute (prompt plus max_tokens) span features too.
    prompt = per_call - 100
    a.admit("acct-2", "essay", HELLO, max_tokens=950 - prompt)  # 950 of the 1000
    with pytest.raises(Throttled) as e:
        b.admit("acct-2", "search", HELLO)
    assert (e.value.scope, e.value.unit, e.value.spent) == ("tier", "tokens", 950)
    with pytest.raises(Throttled, match=r"this call needs \d+ tokens .* more than tier "
                                        r"free's limit of 1000 tokens per minute"):
        a.admit("acct-3", "essay", HELLO)  # 2000 output tokens can never fit 1000 tpm
    for g in (a, b):
        g.close()


def test_tokens_per_minute_refuses_with_the_tokens_needed(redis_url: str, uid: str) -> None:
    budgets = parse_budgets({"features": {"chat": {
        "model": "gpt-4o-mini", "max_output_tokens": 300, "limits": {"tpm": 1000}}}})
    g = Guard(redis_url, budgets, prefix=f"tpm-{uid}:", cache_ttl=0.0)
    need = count_messages(HELLO, "gpt-4o-mini").tokens + 300
    for _ in range(1000 // need):
        g.admit("u", "chat", HELLO)
    with pytest.raises(Throttled) as e:
        g.admit("u", "chat", HELLO)
    assert (e.value.unit, e.value.spent, e.value.budget) == ("tokens", (1000 // need) * need,
                                                               1000)
    assert f"this call needs {need}" in str(e.value)
    g.close()


def test_concurrent_replicas_admit_exactly_the_limit(redis_url: str, uid: str) -> None:
    guards = replicas(redis_url, uid, 4)
    outcomes: list[str] = []
    lock = threading.Lock()

    def hammer(g: Guard) -> None:
        for _ in range(10):
            try:
                g.admit("acct-pro", "chat", HELLO)
                result = "ok"
            except Throttled:
                result = "throttled"
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=hammer, args=(g,)) for g in guards]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outcomes.count("ok") == 3 and outcomes.count("throttled") == 37
    for g in guards:
        g.close()


async def test_async_guard_applies_the_same_limits(redis_url: str, uid: str) -> None:
    g = AsyncGuard(redis_url, BUDGETS, prefix=f"alim-{uid}:", cache_ttl=0.0)
    for _ in range(3):
        await g.admit("acct-pro", "chat", HELLO)
    with pytest.raises(Throttled, match="feature chat's limit of 3 requests"):
        await g.admit("acct-pro", "chat", HELLO)
    await g.aclose()


def test_record_corrects_the_tokens_taken_to_what_the_call_used(redis_url: str,
                                                                 uid: str) -> None:
    budgets = parse_budgets({"features": {"chat": {
        "model": "gpt-4o-mini", "max_output_tokens": 300, "limits": {"tpm": 1000}}}})
    g = Guard(redis_url, budgets, prefix=f"tpmset-{uid}:", cache_ttl=0.0)
    prompt = count_messages(HELLO, "gpt-4o-mini").tokens
    for _ in range(10):  # each answered in 20 tokens: its slot shrinks from prompt + 300
        call = g.admit("u", "chat", HELLO)
        g.record(call, provider="openai", input_tokens=prompt, output_tokens=20)
    used = 10 * (prompt + 20)
    assert 10 * (prompt + 300) > 1000  # the worst case alone would have refused some
    pending = []
    with pytest.raises(Throttled) as e:
        for _ in range(10):
            pending.append(g.admit("u", "chat", HELLO))  # in flight: worst case held
    assert len(pending) == (1000 - used) // (prompt + 300)
    assert e.value.spent == used + len(pending) * (prompt + 300)
    # A failed call used nothing: its slot is freed and the next call fits again.
    g.record(pending[0], provider="openai", input_tokens=0, output_tokens=0, status="error")
    g.admit("u", "chat", HELLO)
    g.close()
