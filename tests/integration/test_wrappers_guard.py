"""The wrappers with the real guard: Redis flags and budgets decide, the real emitter
publishes to a real Kafka-protocol broker, and the real clients talk to the fake LLM."""

from __future__ import annotations

import asyncio
import time

import anthropic
import openai
import orjson
import pytest
import redis
from fake_llm import FakeLLM
from fake_llm import fake_llm as fake_llm  # re-exported so pytest finds the fixture
from test_emitter_kafka import consume, create_topic

from spendstream.contract.keys import cutoff_user
from spendstream.domain.budgets import parse_budgets
from spendstream.embedded import EmbeddedBroker
from spendstream.errors import BudgetExceeded
from spendstream.producers import SyncEmitter, decode_event
from spendstream.producers.guard import AsyncGuard, Guard
from spendstream.producers.wrappers import wrap_anthropic, wrap_openai
from tests.helpers import record_events

pytestmark = pytest.mark.integration

BUDGETS = parse_budgets({
    "users": {"default_tier": "free", "tiers": {"free": {"usd": 0.13}}},
    "features": {
        "chat": {"usd": 100, "max_output_tokens": 200, "model": "gpt-4o",
                 "tier_models": {"free": "gpt-4o-mini"}},
        "summary": {"usd": 100, "max_output_tokens": 300, "model": "claude-3-5-haiku-latest"},
    },
})
HELLO = [{"role": "user", "content": "Tell me about foxes."}]


def cutoff(user_id: str) -> bytes:
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    return orjson.dumps({"scope": "user", "id": user_id, "reason": "daily budget",
                         "level": "cutoff", "spent": "0.20", "budget": "0.13",
                         "unit": "usd", "window_start": "2026-01-01T00:00:00Z",
                         "window_end": end})


def test_openai_calls_through_the_real_guard_reach_kafka(
        fake_llm: FakeLLM, redis_url: str, broker: EmbeddedBroker, uid: str) -> None:
    topic, prefix = f"wrappers-{uid}", f"ss-{uid}:"
    asyncio.run(create_topic(broker.bootstrap, topic))
    client = openai.OpenAI(api_key="test", base_url=fake_llm.openai_url, max_retries=0)
    with SyncEmitter(broker.bootstrap, topic) as emitter:
        guard = Guard(redis_url, BUDGETS, emitter, prefix=prefix, cache_ttl=0.0)
        wrapped = wrap_openai(client, guard)

        # The guard picks the free tier's model and the feature's output cap.
        response = wrapped.chat.completions.create(messages=HELLO,
                                                   user_id="acct-1", feature="chat")
        assert response.choices[0].message.content
        for i, _ in enumerate(wrapped.chat.completions.create(
                messages=HELLO, stream=True, user_id="acct-1", feature="chat")):
            if i == 3:
                break

        # A cutoff flag refuses before the provider is called.
        redis.Redis.from_url(redis_url).set(prefix + cutoff_user("acct-2"), cutoff("acct-2"))
        with pytest.raises(BudgetExceeded):
            wrapped.chat.completions.create(messages=HELLO, user_id="acct-2", feature="chat")
        guard.close()

    assert [r.json["model"] for r in fake_llm.requests] == ["gpt-4o-mini"] * 2
    assert [r.json["max_tokens"] for r in fake_llm.requests] == [200, 200]
    records, _ = asyncio.run(consume(broker.bootstrap, topic, want=2))
    exact, cut = sorted((decode_event(v) for r in records for v in record_events(r)),
                        key=lambda e: e.estimated)
    assert (exact.input_tokens, exact.output_tokens, exact.estimated) == (21, 17, False)
    assert exact.local_input_tokens and exact.local_input_tokens > 0
    assert cut.estimated and cut.output_tokens > 0 and cut.provider == "openai"
    assert {e.user_id for e in (exact, cut)} == {"acct-1"}


async def test_anthropic_through_the_real_async_guard(
        fake_llm: FakeLLM, redis_url: str, uid: str) -> None:
    events = []

    class Sink:
        def emit(self, event: object) -> bool:
            events.append(event)
            return True

    guard = AsyncGuard(redis_url, BUDGETS, Sink(), prefix=f"ss-{uid}:", cache_ttl=0.0)
    client = wrap_anthropic(anthropic.AsyncAnthropic(api_key="test", base_url=fake_llm.url,
                                                     max_retries=0), guard)
    try:
        message = await client.messages.create(system="Be brief.", messages=HELLO,
                                               user_id="acct-1", feature="summary")
    finally:
        await guard.aclose()

    assert message.content[0].text
    [request] = fake_llm.requests
    assert (request.json["model"], request.json["max_tokens"]) == (
        "claude-3-5-haiku-latest", 300)
    assert request.json["system"] == "Be brief."
    [event] = events
    assert (event.provider, event.input_tokens, event.output_tokens) == ("anthropic", 21, 17)
