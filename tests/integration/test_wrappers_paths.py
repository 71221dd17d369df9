"""Every SDK path that calls a model is metered by the real guard (Redis decides), or
refused loudly: Anthropic ``messages.stream()`` (``text_stream``, ``get_final_message()``)
and ``create(stream=True)``; OpenAI ``chat.completions.create/stream/parse``, the
Responses API (``create``, streamed, ``stream()``) and ``embeddings.create``, sync and
async, through the real client libraries against the fake LLM server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anthropic
import openai
import pytest
from fake_llm import TEXT, FakeLLM, Reply
from fake_llm import fake_llm as fake_llm  # re-exported so pytest finds the fixture

from spendstream.contract.event import UsageEvent
from spendstream.domain.budgets import parse_budgets
from spendstream.errors import UnknownFeature, Unmetered
from spendstream.producers.guard import AsyncGuard, Guard
from spendstream.producers.wrappers import wrap_anthropic, wrap_openai

pytestmark = pytest.mark.integration

BUDGETS = parse_budgets({
    "users": {"tiers": {"free": {"usd": 5}}},
    "features": {
        "chat": {"usd": 100, "max_output_tokens": 200, "model": "gpt-4o-mini"},
        "summary": {"usd": 100, "max_output_tokens": 300, "model": "claude-3-5-haiku-latest"},
        "search": {"usd": 100, "model": "text-embedding-3-small"},
    },
})
HELLO = [{"role": "user", "content": "Tell me about foxes."}]


class Sink:
    """The emitter port, keeping what the guard emitted."""

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []

    def emit(self, event: UsageEvent) -> bool:
        self.events.append(event)
        return True

    async def wait(self, n: int, timeout: float = 5.0) -> list[UsageEvent]:
        deadline = time.monotonic() + timeout
        while len(self.events) < n:
            assert time.monotonic() < deadline, f"{len(self.events)} events, wanted {n}"
            await asyncio.sleep(0.01)
        return self.events


def guard(redis_url: str, uid: str, sink: Sink) -> Guard:
    return Guard(redis_url, BUDGETS, sink, prefix=f"p-{uid}:", cache_ttl=0.0)


def aguard(redis_url: str, uid: str, sink: Sink) -> AsyncGuard:
    return AsyncGuard(redis_url, BUDGETS, sink, prefix=f"p-{uid}:", cache_ttl=0.0)


def counts(event: UsageEvent) -> tuple[Any, ...]:
    return (event.provider, event.feature, event.input_tokens, event.output_tokens,
            event.estimated)


def test_anthropic_messages_stream_text_stream_and_final_message(
        fake_llm: FakeLLM, redis_url: str, uid: str) -> None:
    fake_llm.script(Reply(input_tokens=40, output_tokens=19), Reply(input_tokens=41,
                                                                    output_tokens=18))
    sink = Sink()
    client = wrap_anthropic(anthropic.Anthropic(api_key="t", base_url=fake_llm.url,
                                                max_retries=0), guard(redis_url, uid, sink))
    with client.messages.stream(messages=HELLO, user_id="u1", feature="summary") as stream:
        text = "".join(stream.text_stream)
    with client.messages.stream(messages=HELLO, user_id="u1", feature="summary") as stream:
        final = stream.get_final_message()  # read without iterating the wrapper at all

    assert text == TEXT and final.content[0].text == TEXT
    assert [counts(e) for e in sink.events] == [("anthropic", "summary", 40, 19, False),
                                                ("anthropic", "summary", 41, 18, False)]
    assert [r.json["max_tokens"] for r in fake_llm.requests] == [300, 300]


def test_anthropic_messages_stream_left_early_is_estimated(
        fake_llm: FakeLLM, redis_url: str, uid: str) -> None:
    fake_llm.script(Reply(input_tokens=40, output_tokens=19))
    sink = Sink()
    client = wrap_anthropic(anthropic.Anthropic(api_key="t", base_url=fake_llm.url,
                                                max_retries=0), guard(redis_url, uid, sink))
    with client.messages.stream(messages=HELLO, user_id="u1", feature="summary") as stream:
        for i, _ in enumerate(stream.text_stream):
            if i == 2:
                break
    [event] = sink.events
    assert event.estimated and event.input_tokens == 40 and 0 < event.output_tokens < 19


async def test_async_anthropic_stream_and_create_stream(
        fake_llm: FakeLLM, redis_url: str, uid: str) -> None:
    sink = Sink()
    g = aguard(redis_url, uid, sink)
    client = wrap_anthropic(anthropic.AsyncAnthropic(api_key="t", base_url=fake_llm.url,
                                                     max_retries=0), g)
    async with client.messages.stream(messages=HELLO, user_id="u2",
                                      feature="summary") as stream:
        final = await stream.get_final_message()
    created = await client.messages.create(messages=HELLO, stream=True, user_id="u2",
                                           feature="summary")
    deltas = [e async for e in created if e.type == "content_block_delta"]
    await g.aclose()
    assert final.content[0].text == TEXT and len(deltas) == len(TEXT.split())
    assert [counts(e) for e in await sink.wait(2)] == [("anthropic", "summary", 21, 17, False)] * 2


def test_openai_chat_stream_parse_and_create(fake_llm: FakeLLM, redis_url: str,
                                             uid: str) -> None:
    sink = Sink()
    client = wrap_openai(openai.OpenAI(api_key="t", base_url=fake_llm.openai_url,
                                       max_retries=0), guard(redis_url, uid, sink))
    with client.chat.completions.stream(messages=HELLO, user_id="u1",
                                        feature="chat") as stream:
        completion = stream.get_final_completion()
    parsed = client.chat.completions.parse(messages=HELLO, user_id="u1", feature="chat")
    created = client.chat.completions.create(messages=HELLO, user_id="u1", feature="chat")

    assert completion.choices[0].message.content == TEXT
    assert parsed.choices[0].message.content == created.choices[0].message.content == TEXT
    assert [counts(e) for e in sink.events] == [("openai", "chat", 21, 17, False)] * 3
    stream_request = fake_llm.requests[0].json
    assert stream_request["stream"] is True
    assert stream_request["stream_options"] == {"include_usage": True}
    assert [r.json["max_tokens"] for r in fake_llm.requests] == [200] * 3


def test_openai_responses_create_streamed_and_stream_helper(
        fake_llm: FakeLLM, redis_url: str, uid: str) -> None:
    fake_llm.script(Reply(input_tokens=30, output_tokens=12, cached_tokens=10))
    sink = Sink()
    client = wrap_openai(openai.OpenAI(api_key="t", base_url=fake_llm.openai_url,
                                       max_retries=0), guard(redis_url, uid, sink))
    response = client.responses.create(input="Tell me about foxes.", instructions="Be brief.",
                                       user_id="u1", feature="chat")
    streamed = client.responses.create(input=HELLO, stream=True, user_id="u1", feature="chat")
    deltas = [e.delta for e in streamed if e.type == "response.output_text.delta"]
    with client.responses.stream(input=HELLO, user_id="u1", feature="chat") as stream:
        final = stream.get_final_response()

    assert response.output_text == final.output_text == "".join(deltas) == TEXT
    assert [(counts(e), e.cached_input_tokens) for e in sink.events] == [
        (("openai", "chat", 30, 12, False), 10), (("openai", "chat", 21, 17, False), 0),
        (("openai", "chat", 21, 17, False), 0)]
    first = fake_llm.requests[0].json
    assert (first["model"], first["max_output_tokens"], first["instructions"],
            first["input"]) == ("gpt-4o-mini", 200, "Be brief.", "Tell me about foxes.")


def test_openai_responses_stream_cut_is_estimated(fake_llm: FakeLLM, redis_url: str,
                                                  uid: str) -> None:
    fake_llm.script(Reply(drop_after=3))
    sink = Sink()
    client = wrap_openai(openai.OpenAI(api_key="t", base_url=fake_llm.openai_url,
                                       max_retries=0), guard(redis_url, uid, sink))
    streamed = client.responses.create(input=HELLO, stream=True, user_id="u1", feature="chat")
    with pytest.raises(Exception):  # noqa: B017 - the client's own broken-body error
        for _ in streamed:
            pass
    [event] = sink.events
    assert event.estimated and event.output_tokens > 0


async def test_async_openai_every_path(fake_llm: FakeLLM, redis_url: str, uid: str) -> None:
    sink = Sink()
    g = aguard(redis_url, uid, sink)
    client = wrap_openai(openai.AsyncOpenAI(api_key="t", base_url=fake_llm.openai_url,
                                            max_retries=0), g)
    async with client.chat.completions.stream(messages=HELLO, user_id="u3",
                                              feature="chat") as stream:
        completion = await stream.get_final_completion()
    await client.chat.completions.parse(messages=HELLO, user_id="u3", feature="chat")
    response = await client.responses.create(input="hi", user_id="u3", feature="chat")
    async with client.responses.stream(input="hi", user_id="u3", feature="chat") as rs:
        final = await rs.get_final_response()
    embedded = await client.embeddings.create(input=["a fox", "a dog"], user_id="u3",
                                              feature="search")
    await g.aclose()
    assert completion.choices[0].message.content == response.output_text == \
        final.output_text == TEXT
    assert len(embedded.data) == 2 and embedded.data[0].embedding == [0.25, -0.5, 1.0]
    events = await sink.wait(5)
    assert [(e.feature, e.input_tokens, e.output_tokens) for e in events] == [
        ("chat", 21, 17)] * 4 + [("search", 21, 0)]
    assert events[-1].model == "text-embedding-3-small"


def test_openai_embeddings_sync(fake_llm: FakeLLM, redis_url: str, uid: str) -> None:
    fake_llm.script(Reply(input_tokens=9))
    sink = Sink()
    client = wrap_openai(openai.OpenAI(api_key="t", base_url=fake_llm.openai_url,
                                       max_retries=0), guard(redis_url, uid, sink))
    result = client.embeddings.create(input="a quick brown fox", user_id="u1",
                                      feature="search")
    assert result.data[0].embedding == [0.25, -0.5, 1.0]
    [event] = sink.events
    assert counts(event) == ("openai", "search", 9, 0, False)
    assert event.local_input_tokens and event.local_input_tokens > 0


def test_unmetered_paths_are_refused_loudly(fake_llm: FakeLLM, redis_url: str,
                                            uid: str) -> None:
    sink = Sink()
    g = guard(redis_url, uid, sink)
    oa = wrap_openai(openai.OpenAI(api_key="t", base_url=fake_llm.openai_url,
                                   max_retries=0), g)
    an = wrap_anthropic(anthropic.Anthropic(api_key="t", base_url=fake_llm.url,
                                            max_retries=0), g)
    for reach in (lambda: oa.completions, lambda: oa.beta, lambda: oa.batches,
                  lambda: oa.with_raw_response, lambda: oa.responses.with_raw_response,
                  lambda: oa.chat.completions.with_streaming_response,
                  lambda: an.beta, lambda: an.messages.batches,
                  lambda: an.messages.with_raw_response):
        with pytest.raises(Unmetered, match="not metered"):
            reach()
    # with_options keeps the guard; models and the deliberate escape hatch pass through.
    assert isinstance(oa.with_options(timeout=5).chat.completions, type(oa.chat.completions))
    assert oa.models is oa.unguarded.models
    assert fake_llm.requests == [] and sink.events == []


def test_an_unknown_feature_is_refused_or_given_the_default(
        fake_llm: FakeLLM, redis_url: str, uid: str) -> None:
    sink = Sink()
    client = wrap_openai(openai.OpenAI(api_key="t", base_url=fake_llm.openai_url,
                                       max_retries=0), guard(redis_url, uid, sink))
    with pytest.raises(UnknownFeature, match=r"'suport' is not in the budgets file \(known "
                                             r"features: chat, search, summary\)"):
        client.chat.completions.create(messages=HELLO, user_id="u1", feature="suport")
    assert fake_llm.requests == [] and sink.events == []

    with_default = parse_budgets({**BUDGETS.model_dump(by_alias=True, exclude_none=True),
                                  "default_feature": "chat"})
    g = Guard(redis_url, with_default, sink, prefix=f"p-{uid}:", cache_ttl=0.0)
    client = wrap_openai(openai.OpenAI(api_key="t", base_url=fake_llm.openai_url,
                                       max_retries=0), g)
    client.chat.completions.create(messages=HELLO, user_id="u1", feature="suport")
    [request] = fake_llm.requests
    assert (request.json["model"], request.json["max_tokens"]) == ("gpt-4o-mini", 200)
    [event] = sink.events
    assert event.feature == "chat"  # counted against the default feature's budget
