"""wrap_anthropic through the real ``anthropic`` client against a local server in
Anthropic's shape, with the guard port's stand-in (:class:`StandInGuard`)."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import pytest
from fake_llm import TEXT, AsyncStandInGuard, FakeLLM, Reply, StandInGuard, words
from fake_llm import fake_llm as fake_llm  # re-exported so pytest finds the fixture

from spendstream.domain.pricing import Pricer
from spendstream.errors import ConfigError
from spendstream.producers.tokens import count_text
from spendstream.producers.wrappers import wrap_anthropic

pytestmark = pytest.mark.integration

MODEL = "claude-3-5-haiku-latest"
SYSTEM = "You are terse."
MESSAGES = [{"role": "user", "content": "Say something about foxes."}]


def sync_client(fake: FakeLLM) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="test", base_url=fake.url, max_retries=0)


def async_client(fake: FakeLLM) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="test", base_url=fake.url, max_retries=0)


def test_non_stream_records_usage_with_cache_reads_in_the_input(fake_llm: FakeLLM) -> None:
    fake_llm.script(Reply(input_tokens=30, cached_tokens=100, output_tokens=12,
                          cache_write_tokens=1000, stop_reason="max_tokens"))
    guard = StandInGuard(model=MODEL, cap=50)
    client = wrap_anthropic(sync_client(fake_llm), guard)

    message = client.messages.create(model=MODEL, system=SYSTEM, messages=MESSAGES,
                                     max_tokens=1000, user_id="u1", feature="chat")

    assert message.content[0].text == TEXT
    # The guard saw one chat, the system prompt first; the API got it split again.
    assert guard.admissions[0].messages == [{"role": "system", "content": SYSTEM}, *MESSAGES]
    [request] = fake_llm.requests
    assert request.json["system"] == SYSTEM
    assert request.json["messages"] == MESSAGES
    assert request.json["max_tokens"] == 50  # the admission's, not the caller's 1000
    [event] = guard.events
    assert (event.provider, event.model, event.status) == ("anthropic", MODEL, "ok")
    # Cache reads and writes are part of the input, each also in its own field (priced at
    # its own rate by the worker).
    assert (event.input_tokens, event.cached_input_tokens, event.cache_write_input_tokens,
            event.output_tokens) == (1130, 100, 1000, 12)
    assert (event.finish_reason, event.estimated) == ("length", False)


def test_max_tokens_comes_from_the_admission_when_the_caller_gave_none(
        fake_llm: FakeLLM) -> None:
    client = wrap_anthropic(sync_client(fake_llm), StandInGuard(model=MODEL, cap=77))
    client.messages.create(model=MODEL, messages=MESSAGES, user_id="u1", feature="chat")
    [request] = fake_llm.requests
    assert request.json["max_tokens"] == 77
    assert "system" not in request.json


def test_stream_takes_usage_from_message_start_and_message_delta(fake_llm: FakeLLM) -> None:
    fake_llm.script(Reply(input_tokens=40, cached_tokens=10, output_tokens=19,
                          cache_write_tokens=7))
    guard = StandInGuard(model=MODEL)
    client = wrap_anthropic(sync_client(fake_llm), guard)

    stream = client.messages.create(model=MODEL, system=SYSTEM, messages=MESSAGES,
                                    stream=True, user_id="u1", feature="chat")
    text = "".join(e.delta.text for e in stream if e.type == "content_block_delta")

    assert text == TEXT
    [event] = guard.events
    assert (event.input_tokens, event.cached_input_tokens, event.cache_write_input_tokens,
            event.output_tokens) == (57, 10, 7, 19)
    assert (event.finish_reason, event.estimated) == ("end_turn", False)


def test_stream_left_early_bills_the_reported_input_and_the_counted_output(
        fake_llm: FakeLLM) -> None:
    fake_llm.script(Reply(input_tokens=40))
    guard = StandInGuard(model=MODEL)
    client = wrap_anthropic(sync_client(fake_llm), guard)

    got = []
    for event in client.messages.create(model=MODEL, messages=MESSAGES, stream=True,
                                        user_id="u1", feature="chat"):
        if event.type == "content_block_delta":
            got.append(event.delta.text)
            if len(got) == 3:
                break

    [event] = guard.events
    assert event.estimated and event.status == "ok"
    assert event.input_tokens == 40  # message_start already said how long the prompt was
    assert event.output_tokens == count_text("".join(got), MODEL).tokens > 0


def test_connection_dropped_mid_stream_is_billed_as_estimated(fake_llm: FakeLLM) -> None:
    fake_llm.script(Reply(drop_after=4))
    guard = StandInGuard(model=MODEL)
    client = wrap_anthropic(sync_client(fake_llm), guard)

    got = []
    # anthropic lets its HTTP library's error through: the wrapper re-raises it unchanged.
    with pytest.raises(Exception, match="peer closed connection"):
        for event in client.messages.create(model=MODEL, messages=MESSAGES, stream=True,
                                            user_id="u1", feature="chat"):
            if event.type == "content_block_delta":
                got.append(event.delta.text)

    assert "".join(got) == "".join(words(TEXT)[:4])
    [event] = guard.events
    assert event.estimated
    assert event.output_tokens == count_text("".join(got), MODEL).tokens > 0


def test_server_error_is_recorded_free_and_re_raised(fake_llm: FakeLLM) -> None:
    fake_llm.script(Reply(status=500))
    guard = StandInGuard(model=MODEL)
    client = wrap_anthropic(sync_client(fake_llm), guard)

    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model=MODEL, messages=MESSAGES, user_id="u1", feature="chat")

    [event] = guard.events
    assert (event.status, event.input_tokens, event.output_tokens) == ("error", 0, 0)
    assert Pricer().price_event(event).cost == Decimal(0)


async def test_async_non_stream_and_stream(fake_llm: FakeLLM) -> None:
    guard = AsyncStandInGuard(model=MODEL)
    client = wrap_anthropic(async_client(fake_llm), guard)

    message = await client.messages.create(model=MODEL, system=SYSTEM, messages=MESSAGES,
                                           user_id="u1", feature="chat")
    assert message.content[0].text == TEXT

    stream = await client.messages.create(model=MODEL, messages=MESSAGES, stream=True,
                                          user_id="u1", feature="chat")
    async with stream:
        text = "".join([e.delta.text async for e in stream
                        if e.type == "content_block_delta"])
    assert text == TEXT

    fake_llm.script(Reply(drop_after=2))
    stream = await client.messages.create(model=MODEL, messages=MESSAGES, stream=True,
                                          user_id="u1", feature="chat")
    with pytest.raises(Exception, match="peer closed connection"):
        async for _ in stream:
            pass

    ok, streamed, cut = guard.events
    assert (ok.input_tokens, ok.output_tokens, ok.estimated) == (21, 17, False)
    assert (streamed.input_tokens, streamed.output_tokens, streamed.estimated) == (21, 17, False)
    assert cut.estimated and cut.output_tokens > 0


def test_no_max_tokens_anywhere_is_a_clear_error(fake_llm: FakeLLM) -> None:
    class Uncapped(StandInGuard):
        def admit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            from dataclasses import replace
            return replace(super().admit(*args, **kwargs), max_tokens=None)

    client = wrap_anthropic(sync_client(fake_llm), Uncapped(model=MODEL))
    with pytest.raises(ConfigError, match="max_tokens"):
        client.messages.create(model=MODEL, messages=MESSAGES, user_id="u1", feature="chat")
    assert fake_llm.requests == []
