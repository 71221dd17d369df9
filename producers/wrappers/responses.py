"""OpenAI's Responses API and embeddings, guarded (part of :func:`wrap_openai`).

``responses.create/parse/stream`` take ``user_id``, ``feature`` (and ``tier``) like
``chat.completions``: the guard sees ``instructions`` as the system message and ``input``
(a string or a list of messages) as the chat, and caps ``max_output_tokens``. A trimmed
chat goes back as the ``input`` list. ``embeddings.create`` is admitted on its input
texts (no output tokens); an input over the feature's ``max_input_tokens`` is refused, as
embedding inputs cannot be trimmed without changing what is embedded.
"""

from __future__ import annotations

from typing import Any

from spendstream.errors import InputTooLong
from spendstream.producers.guard import Admission
from spendstream.producers.tokens import count_text
from spendstream.producers.wrappers.endpoint import GuardedEndpoint
from spendstream.producers.wrappers.streams import StreamMeter

PROVIDER = "openai"


class _ResponsesBase(GuardedEndpoint):
    provider = PROVIDER
    refused = GuardedEndpoint.refused

    @staticmethod
    def observe(meter: StreamMeter, event: Any) -> None:
        observe_event(meter, event)

    def _request(self, kwargs: dict[str, Any]) -> _ResponsesRequest:
        return _ResponsesRequest(kwargs)

    def _usage(self, response: Any, admission: Admission) -> dict[str, Any]:
        return usage_of(response, admission)


class Responses(_ResponsesBase):
    """``responses`` of a sync client, guarded."""

    def create(self, *, user_id: str, feature: str, tier: str | None = None,
               **kwargs: Any) -> Any:
        """``responses.create(**kwargs)``: admitted, recorded; a stream is metered."""
        return self._create(user_id, feature, tier, kwargs)

    def parse(self, *, user_id: str, feature: str, tier: str | None = None,
              **kwargs: Any) -> Any:
        """``responses.parse(**kwargs)`` (structured output), guarded and recorded."""
        return self._create(user_id, feature, tier, kwargs, "parse")

    def stream(self, *, user_id: str, feature: str, tier: str | None = None,
               **kwargs: Any) -> Any:
        """``responses.stream(**kwargs)``: the ``with`` block's stream is metered."""
        return self._helper(user_id, feature, tier, kwargs)


class AsyncResponses(_ResponsesBase):
    """``responses`` of an ``AsyncOpenAI`` client, guarded."""

    async def create(self, *, user_id: str, feature: str, tier: str | None = None,
                     **kwargs: Any) -> Any:
        """See :meth:`Responses.create`."""
        return await self._acreate(user_id, feature, tier, kwargs)

    async def parse(self, *, user_id: str, feature: str, tier: str | None = None,
                    **kwargs: Any) -> Any:
        """See :meth:`Responses.parse`."""
        return await self._acreate(user_id, feature, tier, kwargs, "parse")

    def stream(self, *, user_id: str, feature: str, tier: str | None = None,
               **kwargs: Any) -> Any:
        """See :meth:`Responses.stream`; admitted when ``async with`` enters."""
        return self._ahelper(user_id, feature, tier, kwargs)


def _as_messages(value: Any) -> list[dict[str, Any]]:
    """The chat the guard counts: a string is one user message; message items keep their
    role; other items (tool outputs) count by their text."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    out: list[dict[str, Any]] = []
    for item in value or []:
        if isinstance(item, dict) and "role" in item:
            out.append({"role": item["role"], "content": item.get("content") or ""})
        elif isinstance(item, dict):
            out.append({"role": "user", "content": str(item.get("output") or "")})
    return out


class _ResponsesRequest:
    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.rest = dict(kwargs)
        self.input = self.rest.pop("input", None)
        instructions = self.rest.pop("instructions", None)
        self.instructions = instructions if isinstance(instructions, str) else None
        self.guard_messages = (
            [{"role": "system", "content": self.instructions}] if self.instructions else []
        ) + _as_messages(self.input)
        model = self.rest.pop("model", None)
        self.model: str | None = model if isinstance(model, str) else None
        cap = self.rest.pop("max_output_tokens", None)
        self.max_tokens: int | None = cap if isinstance(cap, int) else None
        self.stream = self.rest.get("stream") is True

    def params(self, admission: Admission) -> dict[str, Any]:
        params = dict(self.rest, model=admission.model)
        if admission.trimmed:
            system = [m["content"] for m in admission.messages if m.get("role") == "system"]
            params["input"] = [m for m in admission.messages if m.get("role") != "system"]
            if system:
                params["instructions"] = "\n\n".join(str(s) for s in system)
        else:
            if self.input is not None:
                params["input"] = self.input
            if self.instructions is not None:
                params["instructions"] = self.instructions
        if admission.max_tokens is not None:
            params["max_output_tokens"] = admission.max_tokens
        return params


def _finish(response: Any) -> str | None:
    status = getattr(response, "status", None)
    if status == "completed":
        return "stop"
    reason = getattr(getattr(response, "incomplete_details", None), "reason", None)
    if reason == "max_output_tokens":
        return "length"
    return reason if isinstance(reason, str) else status if isinstance(status, str) else None


def _reported(usage: Any) -> tuple[int, int, int] | None:
    inputs = getattr(usage, "input_tokens", None)
    outputs = getattr(usage, "output_tokens", None)
    if not isinstance(inputs, int) or not isinstance(outputs, int):
        return None
    cached = getattr(getattr(usage, "input_tokens_details", None), "cached_tokens", None)
    return inputs, outputs, cached if isinstance(cached, int) else 0


def usage_of(response: Any, admission: Admission) -> dict[str, Any]:
    """``record`` arguments for a ``Response``; a local estimate without usage."""
    model = getattr(response, "model", None)
    common: dict[str, Any] = {"finish_reason": _finish(response),
                              "model": model if isinstance(model, str) and model else None}
    reported = _reported(getattr(response, "usage", None))
    if reported is not None:
        return {**common, "input_tokens": reported[0], "output_tokens": reported[1],
                "cached_input_tokens": reported[2]}
    text = getattr(response, "output_text", None)
    return {**common, "input_tokens": admission.input_tokens_local,
            "output_tokens": count_text(text if isinstance(text, str) else "",
                                        admission.model).tokens, "estimated": True}


def observe_event(meter: StreamMeter, event: Any) -> None:
    """Read one raw Responses stream event: text and argument deltas, and the usage on
    ``response.completed`` / ``response.incomplete``."""
    kind = getattr(event, "type", None)
    if kind in ("response.output_text.delta", "response.function_call_arguments.delta",
                "response.refusal.delta"):
        delta = getattr(event, "delta", None)
        if isinstance(delta, str):
            meter.parts.append(delta)
    elif kind in ("response.created", "response.completed", "response.incomplete",
                  "response.failed"):
        response = getattr(event, "response", None)
        model = getattr(response, "model", None)
        if isinstance(model, str) and model:
            meter.model = model
        if kind == "response.created":
            return
        meter.finish_reason = _finish(response)
        reported = _reported(getattr(response, "usage", None))
        if reported is not None:
            meter.input_tokens, meter.output_tokens, meter.cached_input_tokens = reported
            meter.usage_final = True


class _EmbeddingsBase(GuardedEndpoint):
    provider = PROVIDER

    @staticmethod
    def observe(meter: StreamMeter, event: Any) -> None:  # embeddings never stream
        return None

    def _request(self, kwargs: dict[str, Any]) -> _EmbeddingsRequest:
        return _EmbeddingsRequest(kwargs)

    def _usage(self, response: Any, admission: Admission) -> dict[str, Any]:
        usage = getattr(response, "usage", None)
        prompt = getattr(usage, "prompt_tokens", None)
        model = getattr(response, "model", None)
        common = {"model": model if isinstance(model, str) and model else None,
                  "output_tokens": 0}
        if isinstance(prompt, int):
            return {**common, "input_tokens": prompt}
        return {**common, "input_tokens": admission.input_tokens_local, "estimated": True}


class Embeddings(_EmbeddingsBase):
    """``embeddings`` of a sync client, guarded."""

    def create(self, *, user_id: str, feature: str, tier: str | None = None,
               **kwargs: Any) -> Any:
        """``embeddings.create(**kwargs)``: admitted on the input's tokens, recorded."""
        return self._create(user_id, feature, tier, kwargs)


class AsyncEmbeddings(_EmbeddingsBase):
    """``embeddings`` of an ``AsyncOpenAI`` client, guarded."""

    async def create(self, *, user_id: str, feature: str, tier: str | None = None,
                     **kwargs: Any) -> Any:
        """See :meth:`Embeddings.create`."""
        return await self._acreate(user_id, feature, tier, kwargs)


class _EmbeddingsRequest:
    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.rest = dict(kwargs)
        value = self.rest.get("input")
        texts = [value] if isinstance(value, str) else [
            v for v in (value or []) if isinstance(v, str)]
        self.guard_messages = [{"role": "user", "content": t} for t in texts]
        model = self.rest.pop("model", None)
        self.model: str | None = model if isinstance(model, str) else None
        self.max_tokens: int | None = None
        self.stream = False

    def params(self, admission: Admission) -> dict[str, Any]:
        if admission.trimmed:
            raise InputTooLong(
                f"the embeddings input of feature {admission.feature!r} is over its "
                "max_input_tokens; embedding inputs are never trimmed: split the input",
                tokens=admission.input_tokens_local)
        return dict(self.rest, model=admission.model)
