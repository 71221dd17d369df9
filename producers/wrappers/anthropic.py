"""A drop-in guard around the official ``anthropic`` client's ``messages``.

``wrap_anthropic(Anthropic(...), guard)`` (or ``AsyncAnthropic`` with an ``AsyncGuard``)
returns a client whose ``messages.create`` (streamed or not), ``messages.parse`` and
``messages.stream`` take ``user_id`` and ``feature`` (and optionally ``tier``) besides
Anthropic's own arguments. ``messages.batches``, ``beta``, ``completions`` and the
raw-response variants would spend unmetered: they raise
:class:`~spendstream.errors.Unmetered`. The guard sees the chat as one
list, the ``system=`` prompt first as a ``system`` message, and the admitted list is split
again for the call. ``max_tokens`` is the admission's (Anthropic requires one).

Anthropic reports ``input_tokens`` without the prompt-cache reads and writes; the event's
``input_tokens`` is their sum (the contract: reads and writes are part of input), with the
reads as ``cached_input_tokens`` and the writes as ``cache_write_input_tokens``, so the
worker prices each at its own rate.
"""

from __future__ import annotations

import inspect
from typing import Any

from spendstream.errors import ConfigError
from spendstream.producers.guard import Admission
from spendstream.producers.wrappers.endpoint import GuardedEndpoint
from spendstream.producers.wrappers.streams import (
    GuardedClient,
    StreamMeter,
)

PROVIDER = "anthropic"


def wrap_anthropic(client: Any, guard: Any) -> GuardedAnthropic:
    """Guard ``client`` (``anthropic.Anthropic`` with a ``Guard``,
    ``anthropic.AsyncAnthropic`` with an ``AsyncGuard``); see the module docstring."""
    is_async = inspect.iscoroutinefunction(inspect.unwrap(client.messages.create))
    if is_async != inspect.iscoroutinefunction(guard.admit):
        raise ConfigError(
            "wrap_anthropic: an Anthropic client needs a Guard and an AsyncAnthropic client "
            f"an AsyncGuard (got {type(client).__name__} with {type(guard).__name__})")
    return GuardedAnthropic(client, guard, is_async)


class GuardedAnthropic(GuardedClient):
    """The wrapped client; see the module docstring."""

    refused = frozenset({"beta", "completions", "with_raw_response",
                         "with_streaming_response"})

    def __init__(self, client: Any, guard: Any, is_async: bool) -> None:
        super().__init__(client, guard)
        self.messages: Messages | AsyncMessages = (
            AsyncMessages if is_async else Messages)(client.messages, guard)

    def with_options(self, **options: Any) -> GuardedAnthropic:
        """The client's ``with_options(...)``, guarded the same way."""
        return wrap_anthropic(self._inner.with_options(**options), self._guard)

    copy = with_options


class _Base(GuardedEndpoint):
    provider = PROVIDER
    refused = GuardedEndpoint.refused | {"batches"}

    @staticmethod
    def observe(meter: StreamMeter, chunk: Any) -> None:
        observe_event(meter, chunk)

    def _request(self, kwargs: dict[str, Any]) -> _Request:
        return _Request(kwargs)

    def _usage(self, response: Any, admission: Admission) -> dict[str, Any]:
        return usage_of(response)


class Messages(_Base):
    """``messages`` of a sync client, guarded."""

    def create(self, *, user_id: str, feature: str, tier: str | None = None,
               **kwargs: Any) -> Any:
        """``messages.create(**kwargs)`` for ``user_id`` and ``feature``: admitted by the
        guard first, recorded after; a stream is returned metered."""
        return self._create(user_id, feature, tier, kwargs)

    def parse(self, *, user_id: str, feature: str, tier: str | None = None,
              **kwargs: Any) -> Any:
        """``messages.parse(**kwargs)`` (structured output), guarded and recorded."""
        return self._create(user_id, feature, tier, kwargs, "parse")

    def stream(self, *, user_id: str, feature: str, tier: str | None = None,
               **kwargs: Any) -> Any:
        """``messages.stream(**kwargs)``: admitted now; the ``with`` block's stream is
        metered however it is read (``text_stream``, ``get_final_message()``...)."""
        return self._helper(user_id, feature, tier, kwargs)


class AsyncMessages(_Base):
    """``messages`` of an ``AsyncAnthropic`` client, guarded."""

    async def create(self, *, user_id: str, feature: str, tier: str | None = None,
                     **kwargs: Any) -> Any:
        """See :meth:`Messages.create`."""
        return await self._acreate(user_id, feature, tier, kwargs)

    async def parse(self, *, user_id: str, feature: str, tier: str | None = None,
                    **kwargs: Any) -> Any:
        """See :meth:`Messages.parse`."""
        return await self._acreate(user_id, feature, tier, kwargs, "parse")

    def stream(self, *, user_id: str, feature: str, tier: str | None = None,
               **kwargs: Any) -> Any:
        """See :meth:`Messages.stream`; admitted when ``async with`` enters."""
        return self._ahelper(user_id, feature, tier, kwargs)


class _Request:
    """The caller's arguments: the chat the guard sees, and what passes through."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.rest = dict(kwargs)
        system = self.rest.pop("system", None)
        messages = list(self.rest.pop("messages"))
        self.guard_messages: list[dict[str, Any]] = (
            [{"role": "system", "content": system}] if system else []) + messages
        model = self.rest.pop("model", None)
        self.model: str | None = model if isinstance(model, str) else None
        cap = self.rest.pop("max_tokens", None)
        self.max_tokens: int | None = cap if isinstance(cap, int) else None
        self.stream = self.rest.get("stream") is True

    def params(self, admission: Admission) -> dict[str, Any]:
        if admission.max_tokens is None:
            raise ConfigError(
                f"Anthropic needs max_tokens: pass max_tokens= or set max_output_tokens "
                f"for feature {admission.feature!r} in the budgets file")
        system = [m.get("content") for m in admission.messages if m.get("role") == "system"]
        params = dict(self.rest, model=admission.model, max_tokens=admission.max_tokens,
                      messages=[m for m in admission.messages if m.get("role") != "system"])
        if system:
            params["system"] = _join_system(system)
        return params


def _join_system(parts: list[Any]) -> Any:
    """One ``system=`` value from the admitted system messages (normally exactly one)."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, str) for p in parts):
        return "\n\n".join(parts)
    blocks: list[Any] = []
    for p in parts:
        blocks.extend([{"type": "text", "text": p}] if isinstance(p, str) else list(p))
    return blocks


def _finish(stop_reason: Any) -> str | None:
    """Anthropic's stop_reason in the event's terms: ``max_tokens`` is a ``length`` cut."""
    if not isinstance(stop_reason, str):
        return None
    return "length" if stop_reason == "max_tokens" else stop_reason


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _input(usage: Any) -> tuple[int, int, int] | None:
    """(input tokens including cache reads and writes, cache reads, cache writes) of a
    usage object."""
    uncached = getattr(usage, "input_tokens", None)
    if not isinstance(uncached, int):
        return None
    read = _int(getattr(usage, "cache_read_input_tokens", None))
    written = _int(getattr(usage, "cache_creation_input_tokens", None))
    return uncached + read + written, read, written


def usage_of(response: Any) -> dict[str, Any]:
    """``record`` arguments for a ``Message``."""
    usage = getattr(response, "usage", None)
    model = getattr(response, "model", None)
    inputs = _input(usage) or (0, 0, 0)
    return {"input_tokens": inputs[0], "cached_input_tokens": inputs[1],
            "cache_write_input_tokens": inputs[2],
            "output_tokens": _int(getattr(usage, "output_tokens", None)),
            "finish_reason": _finish(getattr(response, "stop_reason", None)),
            "model": model if isinstance(model, str) and model else None}


def observe_event(meter: StreamMeter, event: Any) -> None:
    """Read one stream event: the input count from ``message_start``, text and tool input
    deltas, and the stop reason and final output count from ``message_delta``."""
    kind = getattr(event, "type", None)
    if kind == "message_start":
        message = getattr(event, "message", None)
        model = getattr(message, "model", None)
        if isinstance(model, str) and model:
            meter.model = model
        inputs = _input(getattr(message, "usage", None))
        if inputs is not None:
            meter.input_tokens, meter.cached_input_tokens, meter.cache_write_input_tokens = (
                inputs)
    elif kind == "content_block_delta":
        delta = getattr(event, "delta", None)
        for attr in ("text", "partial_json", "thinking"):
            value = getattr(delta, attr, None)
            if isinstance(value, str):
                meter.parts.append(value)
    elif kind == "message_delta":
        meter.finish_reason = _finish(getattr(getattr(event, "delta", None), "stop_reason",
                                              None))
        usage = getattr(event, "usage", None)
        output = getattr(usage, "output_tokens", None)
        if isinstance(output, int):
            meter.output_tokens = output
            inputs = _input(usage)  # newer API versions repeat the input count here
            if inputs is not None and inputs[0] > 0:
                (meter.input_tokens, meter.cached_input_tokens,
                 meter.cache_write_input_tokens) = inputs
            meter.usage_final = meter.input_tokens is not None
