"""wrap_openai through the real ``openai`` client against a local server in OpenAI's shape.

The guard here is :class:`StandInGuard` (the guard port's signatures, keeping what it is
asked), so these tests are about the wrapper: what it forwards and what it records.
"""

from __future__ import annotations

import gc
import logging
from decimal import Decimal

import openai
import pytest
from fake_llm import TEXT, AsyncStandInGuard, FakeLLM, Reply, StandInGuard, words
from fake_llm import fake_llm as fake_llm  # re-exported so pytest finds the fixture

from spendstream.domain.pricing import Pricer
from spendstream.errors import ConfigError, Unmetered
from spendstream.producers.tokens import count_text
from spendstream.producers.wrappers import wrap_openai

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say something about foxes."}]


def sync_client(fake: FakeLLM) -> openai.OpenAI:
    return openai.OpenAI(api_key="test", base_url=fake.openai_url, max_retries=0)


def async_client(fake: FakeLLM) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="test", base_url=fake.openai_url, max_retries=0)


def test_non_stream_records_the_reported_usage(fake_llm: FakeLLM) -> None:
    fake_llm.script(Reply(input_tokens=30, output_tokens=12, cached_tokens=8))
    guard = StandInGuard(cap=64)
    client = wrap_openai(sync_client(fake_llm), guard)

    response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                              max_tokens=500, user_id="u1", feature="chat")

    assert response.choices[0].message.content == TEXT
    [event] = guard.events
    assert (event.user_id, event.feature, event.provider, event.model) == (
        "u1", "chat", "openai", "gpt-4o-mini")
    assert (event.input_tokens, event.output_tokens, event.cached_input_tokens) == (30, 12, 8)
    assert (event.status, event.finish_reason, event.estimated) == ("ok", "stop", False)
    assert event.local_input_tokens == guard.admissions[0].input_tokens_local > 0
    # The admission's cap, not the caller's 500, reached the API.
    [request] = fake_llm.requests
    assert request.json["max_tokens"] == 64
    assert request.json["messages"] == MESSAGES


def test_max_tokens_set_from_the_admission_when_the_caller_gave_none(
        fake_llm: FakeLLM) -> None:
    client = wrap_openai(sync_client(fake_llm), StandInGuard(cap=33))
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, user_id="u1",
                                   feature="chat")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, user_id="u1",
                                   feature="chat", max_completion_tokens=100)
    first, second = (r.json for r in fake_llm.requests)
    assert first["max_tokens"] == 33
    assert second["max_completion_tokens"] == 33 and "max_tokens" not in second


async def test_async_non_stream_records_the_reported_usage(fake_llm: FakeLLM) -> None:
    guard = AsyncStandInGuard(cap=40)
    client = wrap_openai(async_client(fake_llm), guard)

    response = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                    user_id="u2", feature="chat")

    assert response.choices[0].message.content == TEXT
    [event] = guard.events
    assert (event.input_tokens, event.output_tokens, event.estimated) == (21, 17, False)
    assert fake_llm.requests[0].json["max_tokens"] == 40


def test_stream_passes_chunks_through_and_takes_usage_from_the_final_chunk(
        fake_llm: FakeLLM) -> None:
    fake_llm.script(Reply(input_tokens=25, output_tokens=18, cached_tokens=4))
    guard = StandInGuard()
    client = wrap_openai(sync_client(fake_llm), guard)

    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                            stream=True, user_id="u1", feature="chat")
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert text == TEXT
    assert fake_llm.requests[0].json["stream_options"] == {"include_usage": True}
    [event] = guard.events
    assert (event.input_tokens, event.output_tokens, event.cached_input_tokens) == (25, 18, 4)
    assert (event.finish_reason, event.estimated) == ("stop", False)
    stream.close()  # closing a finished stream records nothing more
    assert len(guard.events) == 1


def test_stream_without_a_usage_chunk_is_estimated_from_the_text(fake_llm: FakeLLM) -> None:
    fake_llm.script(Reply(usage_chunk=False))
    guard = StandInGuard()
    client = wrap_openai(sync_client(fake_llm), guard)

    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                            stream=True, user_id="u1", feature="chat"):
        pass

    [event] = guard.events
    assert event.estimated
    assert event.output_tokens == count_text(TEXT, "gpt-4o-mini").tokens
    assert event.input_tokens == guard.admissions[0].input_tokens_local


def test_consumer_breaking_early_is_billed_once_as_estimated(fake_llm: FakeLLM) -> None:
    guard = StandInGuard()
    client = wrap_openai(sync_client(fake_llm), guard)

    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                            stream=True, user_id="u1", feature="chat")
    seen = []
    for chunk in stream:
        seen.append(chunk.choices[0].delta.content or "")
        if len(seen) == 4:  # the role chunk and three words
            break

    [event] = guard.events
    assert event.estimated and event.status == "ok"
    assert event.output_tokens == count_text("".join(seen), "gpt-4o-mini").tokens > 0
    assert event.input_tokens == guard.admissions[0].input_tokens_local
    assert Pricer().price_event(event).cost > 0  # a cut stream is never free
    stream.close()
    del stream
    gc.collect()
    assert len(guard.events) == 1


def test_closing_a_stream_unread_bills_the_input(fake_llm: FakeLLM) -> None:
    guard = StandInGuard()
    client = wrap_openai(sync_client(fake_llm), guard)
    with client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                        user_id="u1", feature="chat") as stream:
        next(stream)
    [event] = guard.events
    assert event.estimated and event.input_tokens == guard.admissions[0].input_tokens_local


def test_connection_dropped_mid_stream_is_billed_as_estimated(fake_llm: FakeLLM) -> None:
    fake_llm.script(Reply(drop_after=5))
    guard = StandInGuard()
    client = wrap_openai(sync_client(fake_llm), guard)

    got = []
    with pytest.raises(openai.APIError):  # the client's own error reaches the app
        for chunk in client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, user_id="u1",
                feature="chat"):
            got.append(chunk.choices[0].delta.content or "")

    assert "".join(got) == "".join(words(TEXT)[:5])
    [event] = guard.events
    assert event.estimated and event.status == "ok"
    assert event.output_tokens == count_text("".join(got), "gpt-4o-mini").tokens > 0


def test_server_error_is_recorded_free_and_re_raised(fake_llm: FakeLLM) -> None:
    fake_llm.script(Reply(status=500))
    guard = StandInGuard()
    client = wrap_openai(sync_client(fake_llm), guard)

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, user_id="u1",
                                       feature="chat")

    [event] = guard.events
    assert (event.status, event.input_tokens, event.output_tokens) == ("error", 0, 0)
    assert Pricer().price_event(event).cost == Decimal(0)


async def test_async_stream_usage_break_and_drop(fake_llm: FakeLLM) -> None:
    guard = AsyncStandInGuard()
    client = wrap_openai(async_client(fake_llm), guard)

    # Read to the end: the provider's usage.
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                  stream=True, user_id="u1", feature="chat")
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == TEXT
    assert (guard.events[0].output_tokens, guard.events[0].estimated) == (17, False)

    # Leave the loop early: asyncio finalizes the loop's generator, which bills the cut.
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                  stream=True, user_id="u1", feature="chat")
    n = 0
    async for _ in stream:
        n += 1
        if n == 3:
            break
    events = await guard.wait_for_events(2)
    assert events[1].estimated and events[1].output_tokens > 0

    # The connection drops.
    fake_llm.script(Reply(drop_after=2))
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                  stream=True, user_id="u1", feature="chat")
    with pytest.raises(openai.APIError):
        async with stream:
            async for _ in stream:
                pass
    assert guard.events[2].estimated and guard.events[2].output_tokens > 0
    assert len(guard.events) == 3


async def test_async_server_error_is_recorded_free(fake_llm: FakeLLM) -> None:
    fake_llm.script(Reply(status=500))
    guard = AsyncStandInGuard()
    client = wrap_openai(async_client(fake_llm), guard)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                             user_id="u1", feature="chat")
    [event] = guard.events
    assert (event.status, event.input_tokens, event.output_tokens) == ("error", 0, 0)


class BrokenRecorder(StandInGuard):
    def record(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        raise RuntimeError("kafka is on fire")


def test_a_failing_record_never_fails_the_call(fake_llm: FakeLLM,
                                                caplog: pytest.LogCaptureFixture) -> None:
    client = wrap_openai(sync_client(fake_llm), BrokenRecorder())
    with caplog.at_level(logging.ERROR):
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                  user_id="u1", feature="chat")
        text = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                      stream=True, user_id="u1",
                                                      feature="chat") if c.choices)
    assert response.choices[0].message.content == text == TEXT
    assert "could not record" in caplog.text


def test_other_client_attributes_pass_through_and_guards_must_match(
        fake_llm: FakeLLM) -> None:
    raw = sync_client(fake_llm)
    wrapped = wrap_openai(raw, StandInGuard())
    assert wrapped.base_url == raw.base_url
    assert wrapped.chat.completions.messages is raw.chat.completions.messages
    # A raw-response call would reach the provider without the guard: refused loudly.
    with pytest.raises(Unmetered, match="with_raw_response is not metered"):
        wrapped.chat.completions.with_raw_response.create(model="gpt-4o", messages=[])
    with pytest.raises(ConfigError, match="AsyncGuard"):
        wrap_openai(async_client(fake_llm), StandInGuard())
