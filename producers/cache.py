"""The response cache's key and stored form, and the replay of a cached stream.

On for a feature with ``cache: {ttl: 1h}`` in the budgets file; used by the wrappers'
``create`` calls. The key is a SHA-256 of the provider, the endpoint, the feature and the
admitted request (model, messages, ``max_tokens`` and every other parameter that changes
the answer: temperature, tools, response format...), so identical calls share one entry
in Redis (every replica sees it). Only complete answers are stored: a provider error or a
stream cut before its final usage never is. A stored answer is the SDK's own response (or
its stream's chunks) as JSON with the class that rebuilds it, and the usage it cost, so a
hit can say what it saved.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from spendstream.contract import keys

log = logging.getLogger("spendstream.cache")

IGNORED = frozenset({"stream_options", "user", "metadata", "store", "timeout",
                     "extra_headers", "extra_query", "safety_identifier", "prompt_cache_key",
                     "service_tier", "background"})
"""Parameters that do not change the answer. ``stream`` does (a stream is stored as
chunks), so a streamed and a plain call are separate entries."""

_MODULES = ("openai.", "anthropic.")
"""Stored class paths are only ever resolved inside the two SDKs."""


def cache_key(prefix: str, provider: str, endpoint: str, feature: str,
              params: dict[str, Any]) -> str:
    """The prefixed Redis key of one admitted request."""
    wanted = {k: v for k, v in params.items() if k not in IGNORED}
    digest = hashlib.sha256(orjson.dumps([provider, endpoint, feature, wanted],
                                         option=orjson.OPT_SORT_KEYS,
                                         default=_jsonable)).hexdigest()
    return prefix + keys.response_cache(feature, digest)


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, list | tuple | set | frozenset):
        return list(value)
    return repr(value)  # deterministic for the SDKs' sentinels (NOT_GIVEN, Omit)


def _path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _rebuild(path: str, data: Any) -> Any:
    module, _, name = path.partition(":")
    if not module.startswith(_MODULES):
        raise ValueError(f"refusing to rebuild {path}")
    cls = getattr(importlib.import_module(module), name)
    return cls.model_validate(data)


@dataclass(frozen=True, slots=True)
class Stored:
    """A cached answer: the response or the stream's chunks, and what it cost."""

    stream: bool
    items: list[tuple[str, Any]]
    """``(class path, JSON)`` of the response, or of each chunk in order."""
    usage: dict[str, Any]
    """``record`` arguments of the original call (tokens, model, finish_reason)."""

    def encode(self) -> bytes:
        """The stored bytes."""
        return orjson.dumps({"stream": self.stream, "items": self.items, "usage": self.usage})

    @classmethod
    def decode(cls, raw: bytes) -> Stored | None:
        """The stored answer, or ``None`` when it cannot be read (then the call is made)."""
        try:
            data = orjson.loads(raw)
            return cls(bool(data["stream"]), [(str(p), d) for p, d in data["items"]],
                       dict(data["usage"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("an unreadable response cache entry was ignored")
            return None

    @classmethod
    def of_response(cls, response: Any, usage: dict[str, Any]) -> Stored:
        """A complete non-streamed response."""
        return cls(False, [(_path(response), response.model_dump(mode="json"))], usage)

    @classmethod
    def of_chunks(cls, chunks: list[Any], usage: dict[str, Any]) -> Stored:
        """A stream that ended with the provider's usage."""
        return cls(True, [(_path(c), c.model_dump(mode="json")) for c in chunks], usage)

    def objects(self) -> list[Any]:
        """The SDK objects again (raises when a class no longer exists)."""
        return [_rebuild(path, data) for path, data in self.items]


class ReplayStream:
    """A cached stream, replayed chunk by chunk like the SDK's ``Stream``."""

    def __init__(self, chunks: list[Any]) -> None:
        self._chunks = chunks
        self.response = None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._chunks)

    def __enter__(self) -> ReplayStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the answer came from the cache."""


class AsyncReplayStream:
    """The asyncio form of :class:`ReplayStream`."""

    def __init__(self, chunks: list[Any]) -> None:
        self._chunks = chunks
        self.response = None

    async def __aiter__(self) -> AsyncIterator[Any]:
        for chunk in self._chunks:
            yield chunk

    async def __aenter__(self) -> AsyncReplayStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Nothing to release."""
