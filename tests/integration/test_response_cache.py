"""The response cache: off by default, on per feature (``cache: {ttl: ...}``), in Redis
(shared by replicas), keyed by the admitted request; a hit reaches no provider, costs
nothing and is recorded as ``cache_hit`` with the cost it saved; streams are cached and
replayed; an error or a cut stream never is. Real guard, Redis, clients and fake LLM."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
import redis.asyncio
from fake_llm import TEXT, FakeLLM, Reply
from fake_llm import fake_llm as fake_llm  # re-exported so pytest finds the fixture

from spendstream.contract.event import UsageEvent
from spendstream.contract.keys import response_cache
from spendstream.domain.budgets import parse_budgets
from spendstream.producers.guard import AsyncGuard, Guard
from spendstream.producers.wrappers import wrap_anthropic, wrap_openai

pytestmark = pytest.mark.integration

BUDGETS = parse_budgets({
    "features": {
        "faq": {"model": "gpt-4o-mini", "max_output_tokens": 100, "cache": {"ttl": "1h"}},
        "chat": {"model": "gpt-4o-mini", "max_output_tokens": 100},
        "summary": {"model": "claude-3-5-haiku-latest", "max_output_tokens": 100,
                    "cache": {"ttl": 60}},
    },
    "prices": {"gpt-4o-mini": {"input": "0.15", "output": "0.60"},
               "claude-3-5-haiku-latest": {"input": "0.80", "output": "4.00"}},
})
Q = [{"role": "user", "content": "What are your opening hours?"}]


class Sink:
    def __init__(self) -> None:
        self.events: list[UsageEvent] = []

    def emit(self, event: UsageEvent) -> bool:
        self.events.append(event)
        return True


def openai_client(fake: FakeLLM, guard: Any) -> Any:
    return wrap_openai(openai.OpenAI(api_key="t", base_url=fake.openai_url, max_retries=0),
                       guard)


def hit_shape(e: UsageEvent) -> tuple[Any, ...]:
    return (e.cache_hit, e.input_tokens, e.output_tokens, e.cost_usd)


def test_an_identical_call_is_answered_from_the_cache_and_recorded_free(
        fake_llm: FakeLLM, redis_url: str, uid: str) -> None:
    sink = Sink()
    a = Guard(redis_url, BUDGETS, sink, prefix=f"c-{uid}:", cache_ttl=0.0)
    b = Guard(redis_url, BUDGETS, sink, prefix=f"c-{uid}:", cache_ttl=0.0)  # a replica
    first = openai_client(fake_llm, a).chat.completions.create(messages=Q, user_id="u1",
                                                               feature="faq")
    again = openai_client(fake_llm, b).chat.completions.create(messages=Q, user_id="u2",
                                                               feature="faq")
    assert len(fake_llm.requests) == 1  # the replica's call never reached the provider
    assert again.choices[0].message.content == first.choices[0].message.content == TEXT
    assert type(again) is type(first) and again.id == first.id
    miss, hit = sink.events
    assert (miss.cache_hit, miss.input_tokens, miss.output_tokens) == (None, 21, 17)
    assert hit_shape(hit) == (True, 0, 0, Decimal(0)) and hit.user_id == "u2"
    # What the hit saved: 21 x $0.15/M + 17 x $0.60/M.
    assert hit.saved_usd == Decimal("0.00001335")
    assert b.stats.cache_answers == 1

    # A parameter that changes the answer is another entry; a feature without cache:
    # never cached (off by default).
    client = openai_client(fake_llm, a)
    client.chat.completions.create(messages=Q, temperature=0.2, user_id="u1", feature="faq")
    client.chat.completions.create(messages=Q, user_id="u1", feature="chat")
    client.chat.completions.create(messages=Q, user_id="u1", feature="chat")
    assert len(fake_llm.requests) == 4
    assert [e.cache_hit for e in sink.events[2:]] == [None, None, None]
    a.close()
    b.close()


def test_a_stream_is_cached_and_replayed_but_never_a_cut_one_or_an_error(
        fake_llm: FakeLLM, redis_url: str, uid: str) -> None:
    sink = Sink()
    g = Guard(redis_url, BUDGETS, sink, prefix=f"s-{uid}:", cache_ttl=0.0)
    client = openai_client(fake_llm, g)

    def stream_text(**kw: Any) -> str:
        chunks = client.chat.completions.create(messages=Q, stream=True, user_id="u1",
                                                feature="faq", **kw)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    fake_llm.script(Reply(drop_after=2))
    with pytest.raises(openai.APIError):
        stream_text()
    fake_llm.script(Reply(status=500))
    with pytest.raises(openai.InternalServerError):
        stream_text()
    assert stream_text() == TEXT  # the first complete answer is stored
    assert stream_text() == TEXT  # replayed
    assert len(fake_llm.requests) == 3
    cut, failed, miss, hit = sink.events
    assert cut.estimated and failed.status == "error" and miss.output_tokens == 17
    assert hit_shape(hit) == (True, 0, 0, Decimal(0)) and hit.saved_usd

    # Non-streamed: an error is never stored either.
    fake_llm.script(Reply(status=500))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(messages=Q, user_id="u1", feature="faq", seed=7)
    client.chat.completions.create(messages=Q, user_id="u1", feature="faq", seed=7)
    assert len(fake_llm.requests) == 5
    g.close()


def test_anthropic_answers_are_cached_streamed_or_not(fake_llm: FakeLLM, redis_url: str,
                                                      uid: str) -> None:
    sink = Sink()
    g = Guard(redis_url, BUDGETS, sink, prefix=f"a-{uid}:", cache_ttl=0.0)
    client = wrap_anthropic(anthropic.Anthropic(api_key="t", base_url=fake_llm.url,
                                                max_retries=0), g)
    texts = [client.messages.create(messages=Q, user_id="u1", feature="summary")
             .content[0].text for _ in range(2)]
    streams = ["".join(e.delta.text for e in client.messages.create(
        messages=Q, stream=True, user_id="u1", feature="summary")
        if e.type == "content_block_delta") for _ in range(2)]
    assert texts == streams == [TEXT, TEXT]
    assert len(fake_llm.requests) == 2
    assert [e.cache_hit for e in sink.events] == [None, True, None, True]
    assert sink.events[1].saved_usd == Decimal("0.0000848")  # 21 x $0.80/M + 17 x $4/M
    g.close()


async def test_the_async_guard_caches_too(fake_llm: FakeLLM, redis_url: str, uid: str
                                          ) -> None:
    sink = Sink()
    g = AsyncGuard(redis_url, BUDGETS, sink, prefix=f"as-{uid}:", cache_ttl=0.0)
    client = wrap_openai(openai.AsyncOpenAI(api_key="t", base_url=fake_llm.openai_url,
                                            max_retries=0), g)
    await client.chat.completions.create(messages=Q, user_id="u1", feature="faq")
    stream = await client.chat.completions.create(messages=Q, stream=True, user_id="u1",
                                                  feature="faq")
    async for _ in stream:
        pass
    r = redis.asyncio.Redis.from_url(redis_url)
    pattern = f"as-{uid}:" + response_cache("faq", "*")
    deadline = time.monotonic() + 5
    while len(await r.keys(pattern)) < 2:  # the stores run as tasks on the loop
        assert time.monotonic() < deadline, "the async stores never landed"
        await asyncio.sleep(0.02)
    await r.aclose()
    again = await client.chat.completions.create(messages=Q, user_id="u1", feature="faq")
    replay = await client.chat.completions.create(messages=Q, stream=True, user_id="u1",
                                                  feature="faq")
    text = "".join([c.choices[0].delta.content or "" async for c in replay if c.choices])
    assert len(fake_llm.requests) == 2
    await g.aclose()
    assert again.choices[0].message.content == text == TEXT
    assert [e.cache_hit for e in sink.events][-2:] == [True, True]


EDGE = parse_budgets({
    "users": {"tiers": {"free": {"usd": "0.01"}}},
    "features": {"faq": {"model": "gpt-4o-mini", "max_output_tokens": 100,
                         "cache": {"ttl": "1h"}}},
    "prices": {"gpt-4o-mini": {"input": "0.15", "output": "0.60"}},
    "reservations": {},
})


def _held(r: Any, prefix: str, user: str) -> int:
    from spendstream.contract.keys import reserved_user

    return int(r.hget(prefix + reserved_user(user), "_total") or 0)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_cache_hit_holds_no_reservation_and_is_served_at_the_budgets_edge(
        fake_llm: FakeLLM, redis_url: str, uid: str, kind: str) -> None:
    """A cached answer costs nothing, so it neither needs nor takes a worst-case hold: at
    the edge of the user's budget, where a miss is refused, the hit is still answered."""
    import orjson
    import redis as sync_redis

    from spendstream.contract.keys import spend_user
    from spendstream.errors import BudgetExceeded

    prefix, sink, r = f"edge-{uid}:", Sink(), sync_redis.Redis.from_url(redis_url)
    if kind == "sync":
        guard: Any = Guard(redis_url, EDGE, sink, prefix=prefix, cache_ttl=0.0)
        client = openai_client(fake_llm, guard)

        async def ask(messages: list[dict[str, str]]) -> Any:
            return client.chat.completions.create(messages=messages, user_id="u1",
                                                  feature="faq")
    else:
        guard = AsyncGuard(redis_url, EDGE, sink, prefix=prefix, cache_ttl=0.0)
        aclient = wrap_openai(openai.AsyncOpenAI(api_key="t", base_url=fake_llm.openai_url,
                                                 max_retries=0), guard)

        async def ask(messages: list[dict[str, str]]) -> Any:
            return await aclient.chat.completions.create(messages=messages, user_id="u1",
                                                         feature="faq")
    try:
        first = await ask(Q)  # a miss: reserved, answered, settled to its cost
        if kind == "async":
            await asyncio.gather(*guard._settling)  # the settlement and the cache write
        settled = _held(r, prefix, "u1")
        assert settled == 13_350  # nano-USD: 21 x $0.15/M + 17 x $0.60/M, held until counted
        # The worker has counted $0.00999 of the user's $0.01 day: no worst case fits now.
        r.set(prefix + spend_user("u1"), orjson.dumps({"spent_usd": "0.00999"}), ex=60)
        hit = await ask(Q)
        assert hit.choices[0].message.content == first.choices[0].message.content
        assert _held(r, prefix, "u1") == settled  # the hit held nothing
        with pytest.raises(BudgetExceeded, match="reserved by calls in flight"):
            await ask([{"role": "user", "content": "Something new?"}])
        assert len(fake_llm.requests) == 1
        assert [e.cache_hit for e in sink.events] == [None, True]
    finally:
        if kind == "sync":
            guard.close()
        else:
            await guard.aclose()
