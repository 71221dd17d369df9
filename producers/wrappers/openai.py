"""A drop-in guard around the official ``openai`` client.

``wrap_openai(OpenAI(...), guard)`` (or ``AsyncOpenAI`` with an ``AsyncGuard``) returns a
client whose model calls take two more keyword arguments, ``user_id`` and ``feature`` (and
optionally ``tier``): the guard admits the call first (and may refuse it, trim the
messages, pick the model and cap ``max_tokens``), the real client makes it, and its usage
is recorded. Guarded: ``chat.completions.create`` (streamed or not), ``.parse`` and
``.stream``; ``responses.create`` (streamed or not), ``.parse`` and ``.stream``;
``embeddings.create``. Refused with :class:`~spendstream.errors.Unmetered`: the endpoints
that spend outside those (legacy ``completions``, ``beta``, ``batches``, ``images``,
``audio``, ``realtime``, ``videos`` and the raw-response variants). Everything else
(``models``, ``files``...) is the wrapped client's, so any OpenAI-compatible ``base_url``
works.
"""

from __future__ import annotations

import inspect
from typing import Any

from spendstream.errors import ConfigError
from spendstream.producers.guard import Admission
from spendstream.producers.tokens import count_text
from spendstream.producers.wrappers.endpoint import GuardedEndpoint
from spendstream.producers.wrappers.responses import (
    AsyncEmbeddings,
    AsyncResponses,
    Embeddings,
    Responses,
)
from spendstream.producers.wrappers.streams import (
    GuardedClient,
    Passthrough,
    StreamMeter,
)

PROVIDER = "openai"


def wrap_openai(client: Any, guard: Any) -> GuardedOpenAI:
    """Guard ``client`` (``openai.OpenAI`` with a ``Guard``, ``openai.AsyncOpenAI`` with an
    ``AsyncGuard``); see the module docstring."""
    is_async = inspect.iscoroutinefunction(inspect.unwrap(client.chat.completions.create))
    if is_async != inspect.iscoroutinefunction(guard.admit):
        raise ConfigError(
            "wrap_openai: an OpenAI client needs a Guard and an AsyncOpenAI client an "
            f"AsyncGuard (got {type(client).__name__} with {type(guard).__name__})")
    return GuardedOpenAI(client, guard, is_async)


class GuardedOpenAI(GuardedClient):
    """The wrapped client; see the module docstring."""

    refused = frozenset({"completions", "beta", "batches", "images", "audio", "realtime",
                         "videos", "with_raw_response", "with_streaming_response"})

    def __init__(self, client: Any, guard: Any, is_async: bool) -> None:
        super().__init__(client, guard)
        completions = (AsyncCompletions if is_async else Completions)(
            client.chat.completions, guard)
        self.chat = _Chat(client.chat, completions)
        responses = getattr(client, "responses", None)  # openai < 1.66 has no Responses API
        if responses is not None:
            self.responses: Responses | AsyncResponses = (
                AsyncResponses if is_async else Responses)(responses, guard)
        self.embeddings: Embeddings | AsyncEmbeddings = (
            AsyncEmbeddings if is_async else Embeddings)(client.embeddings, guard)

    def with_options(self, **options: Any) -> GuardedOpenAI:
        """The client's ``with_options(...)``, guarded the same way."""
        return wrap_openai(self._inner.with_options(**options), self._guard)

    copy = with_options


class _Chat(Passthrough):
    def __init__(self, inner: Any, completions: Completions | AsyncCompletions) -> None:
        super().__init__(inner)
        self.completions = completions


class _Base(GuardedEndpoint):
    provider = PROVIDER

    @staticmethod
    def observe(meter: StreamMeter, chunk: Any) -> None:
        observe_chunk(meter, chunk)

    def _request(self, kwargs: dict[str, Any]) -> _Request:
        return _Request(kwargs)

    def _usage(self, response: Any, admission: Admission) -> dict[str, Any]:
        return usage_of(response, admission)


class Completions(_Base):
    """``chat.completions`` of a sync client, guarded."""

    def create(self, *, user_id: str, feature: str, tier: str | None = None,
               **kwargs: Any) -> Any:
        """``chat.completions.create(**kwargs)`` for ``user_id`` and ``feature``: admitted
        by the guard first, recorded after; a stream is returned metered."""
        return self._create(user_id, feature, tier, kwargs)

    def parse(self, *, user_id: str, feature: str, tier: str | None = None,
              **kwargs: Any) -> Any:
        """``chat.completions.parse(**kwargs)`` (structured output), guarded and recorded."""
        return self._create(user_id, feature, tier, kwargs, "parse")

    def stream(self, *, user_id: str, feature: str, tier: str | None = None,
               **kwargs: Any) -> Any:
        """``chat.completions.stream(**kwargs)``: admitted now; the ``with`` block's
        stream is metered whichever way it is read (events, ``get_final_completion()``)."""
        return self._helper(user_id, feature, tier, kwargs)


class AsyncCompletions(_Base):
    """``chat.completions`` of an ``AsyncOpenAI`` client, guarded."""

    async def create(self, *, user_id: str, feature: str, tier: str | None = None,
                     **kwargs: Any) -> Any:
        """See :meth:`Completions.create`."""
        return await self._acreate(user_id, feature, tier, kwargs)

    async def parse(self, *, user_id: str, feature: str, tier: str | None = None,
                    **kwargs: Any) -> Any:
        """See :meth:`Completions.parse`."""
        return await self._acreate(user_id, feature, tier, kwargs, "parse")

    def stream(self, *, user_id: str, feature: str, tier: str | None = None,
               **kwargs: Any) -> Any:
        """See :meth:`Completions.stream`; admitted when ``async with`` enters."""
        return self._ahelper(user_id, feature, tier, kwargs)


class _Request:
    """The caller's arguments, split into what the guard decides and what passes through."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.rest = dict(kwargs)
        self.guard_messages: list[dict[str, Any]] = list(self.rest.pop("messages"))
        model = self.rest.pop("model", None)
        self.model: str | None = model if isinstance(model, str) else None
        # Reasoning models take max_completion_tokens; forward the cap under the caller's name.
        self.cap_key = ("max_completion_tokens" if "max_completion_tokens" in self.rest
                        else "max_tokens")
        cap = self.rest.pop(self.cap_key, None)
        self.max_tokens: int | None = cap if isinstance(cap, int) else None
        self.stream = self.rest.get("stream") is True

    def params(self, admission: Admission) -> dict[str, Any]:
        params = dict(self.rest, messages=admission.messages, model=admission.model)
        if admission.max_tokens is not None:
            params[self.cap_key] = admission.max_tokens
        if self.stream:
            options = self.rest.get("stream_options")
            params["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                        "include_usage": True}
        return params


def usage_of(response: Any, admission: Admission) -> dict[str, Any]:
    """``record`` arguments for a ``ChatCompletion``; a local estimate when the server sent
    no usage (some OpenAI-compatible servers do not)."""
    choices = getattr(response, "choices", None) or []
    finish = getattr(choices[0], "finish_reason", None) if choices else None
    model = getattr(response, "model", None)
    common: dict[str, Any] = {
        "finish_reason": finish if isinstance(finish, str) else None,
        "model": model if isinstance(model, str) and model else None,
    }
    usage = getattr(response, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    if isinstance(prompt, int) and isinstance(completion, int):
        details = getattr(usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None)
        return {**common, "input_tokens": prompt, "output_tokens": completion,
                "cached_input_tokens": cached if isinstance(cached, int) else 0}
    text = "".join(_text(getattr(c, "message", None)) for c in choices)
    return {**common, "input_tokens": admission.input_tokens_local,
            "output_tokens": count_text(text, admission.model).tokens, "estimated": True}


def _text(message_or_delta: Any) -> str:
    """Generated text of a message or a stream delta: content and tool-call arguments."""
    if message_or_delta is None:
        return ""
    parts = []
    content = getattr(message_or_delta, "content", None)
    if isinstance(content, str):
        parts.append(content)
    for call in getattr(message_or_delta, "tool_calls", None) or []:
        arguments = getattr(getattr(call, "function", None), "arguments", None)
        if isinstance(arguments, str):
            parts.append(arguments)
    return "".join(parts)


def observe_chunk(meter: StreamMeter, chunk: Any) -> None:
    """Read one ``ChatCompletionChunk``: deltas of every choice, choice 0's finish_reason,
    and the usage that ``include_usage`` puts on the final chunk."""
    model = getattr(chunk, "model", None)
    if isinstance(model, str) and model:
        meter.model = model
    for choice in getattr(chunk, "choices", None) or []:
        text = _text(getattr(choice, "delta", None))
        if text:
            meter.parts.append(text)
        finish = getattr(choice, "finish_reason", None)
        if getattr(choice, "index", 0) == 0 and isinstance(finish, str):
            meter.finish_reason = finish
    usage = getattr(chunk, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    if isinstance(prompt, int) and isinstance(completion, int):
        cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
        meter.input_tokens, meter.output_tokens = prompt, completion
        meter.cached_input_tokens = cached if isinstance(cached, int) else 0
        meter.usage_final = True
