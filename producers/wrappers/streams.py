"""Shared accounting for the wrappers: record a call's usage once, never failing the call.

A streamed answer is metered by a :class:`StreamMeter` fed each chunk. When the stream
ends with the provider's own usage, that is recorded; when the consumer leaves early,
closes it, or the connection drops, what was generated is counted locally
(``count_text`` over the text deltas) and recorded as ``estimated``, so a cut stream is
never free. Either way the usage is recorded exactly once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from spendstream.errors import Unmetered
from spendstream.producers.guard import Admission
from spendstream.producers.tokens import count_text

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Recorder(Protocol):
    """What the wrappers need from :class:`~spendstream.producers.guard.Guard` after a call
    (``AsyncGuard.record`` is synchronous too)."""

    def record(self, admission: Admission, *, provider: str | None, input_tokens: int,
               output_tokens: int, cached_input_tokens: int = 0, status: str = "ok",
               finish_reason: str | None = None, estimated: bool = False,
               model: str | None = None, cache_write_input_tokens: int = 0) -> Any:
        """Build and emit the usage event of a finished, failed or cut call."""
        ...


def record_safely(guard: Recorder, admission: Admission, **usage: Any) -> None:
    """``guard.record(admission, **usage)``; a failure is logged, never raised, because
    metering must not fail the application's model call."""
    try:
        guard.record(admission, **usage)
    except Exception:
        logger.exception("spendstream could not record the usage of a %s call for "
                         "user %s, feature %s", usage.get("provider"), admission.user_id,
                         admission.feature)


class StreamMeter:
    """What one stream has said so far, and its single recording.

    ``observe`` is the provider's chunk reader (see the ``openai`` and ``anthropic``
    modules): it appends generated text to :attr:`parts` and sets the reported usage.
    """

    def __init__(self, guard: Recorder, admission: Admission, provider: str,
                 observe: Callable[[StreamMeter, Any], None]) -> None:
        self.guard = guard
        self.admission = admission
        self.provider = provider
        self._observe = observe
        self.parts: list[str] = []
        """Generated text (content, tool-call arguments) as it streamed."""
        self.input_tokens: int | None = None
        """Input tokens as the provider reported them, when it did."""
        self.output_tokens: int | None = None
        self.cached_input_tokens = 0
        self.cache_write_input_tokens = 0
        self.usage_final = False
        """Whether the provider reported the complete usage of the answer."""
        self.finish_reason: str | None = None
        self.model: str | None = None
        self._lock = threading.Lock()
        self._settled = False
        self.keep: list[Any] | None = None
        """Every chunk, when the answer is to be cached (``store`` is set)."""
        self.store: Callable[[StreamMeter], None] | None = None
        """Called once the stream completed with the provider's usage (never for a cut
        or failed stream): the response cache stores :attr:`keep`."""

    def usage(self) -> dict[str, Any]:
        """The provider's usage of a completed stream, as ``record`` arguments."""
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cached_input_tokens": self.cached_input_tokens,
                "finish_reason": self.finish_reason, "model": self.model}

    @property
    def settled(self) -> bool:
        """Whether the usage has been recorded."""
        return self._settled

    def observe(self, chunk: Any) -> None:
        """Read one chunk; an unexpected shape is logged, and the chunk still goes to the
        consumer."""
        try:
            self._observe(self, chunk)
        except Exception:
            logger.exception("spendstream could not read a %s stream chunk", self.provider)
        if self.keep is not None:
            self.keep.append(chunk)

    def settle(self, *, complete: bool) -> None:
        """Record the usage once: the provider's when the stream completed with it, else
        the local count of what was generated, marked estimated."""
        with self._lock:
            if self._settled:
                return
            self._settled = True
        if complete and self.usage_final and self.input_tokens is not None \
                and self.output_tokens is not None:
            record_safely(self.guard, self.admission, provider=self.provider,
                          input_tokens=self.input_tokens, output_tokens=self.output_tokens,
                          cached_input_tokens=self.cached_input_tokens,
                          cache_write_input_tokens=self.cache_write_input_tokens,
                          finish_reason=self.finish_reason, model=self.model)
            if self.store is not None:
                try:
                    self.store(self)
                except Exception:
                    logger.exception("spendstream could not cache a %s stream", self.provider)
            return
        try:
            output = count_text("".join(self.parts), self.admission.model).tokens
        except Exception:  # count_text does not raise; if it ever did, still bill the input
            logger.exception("spendstream could not count a cut %s stream", self.provider)
            output = 0
        if self.input_tokens is not None:
            # The provider already said how long the prompt was (Anthropic's message_start).
            input_tokens, cached = self.input_tokens, self.cached_input_tokens
            written = self.cache_write_input_tokens
        else:
            input_tokens, cached, written = self.admission.input_tokens_local, 0, 0
        record_safely(self.guard, self.admission, provider=self.provider,
                      input_tokens=input_tokens, output_tokens=output,
                      cached_input_tokens=cached, cache_write_input_tokens=written,
                      finish_reason=self.finish_reason,
                      estimated=True, model=self.model)


class Passthrough:
    """A stand-in for one object of the client: what it does not define itself is the
    wrapped object's, so everything the wrappers do not guard works unchanged."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class GuardedClient(Passthrough):
    """A wrapped client: the guarded endpoints are set by the subclass; the endpoints that
    spend money outside them (:attr:`refused`) raise :class:`~spendstream.errors.Unmetered`,
    the rest (files, models...) pass through. ``unguarded`` is the client itself, for a
    deliberate call that is metered some other way."""

    refused: frozenset[str] = frozenset({"with_raw_response", "with_streaming_response"})

    def __init__(self, client: Any, guard: Any) -> None:
        super().__init__(client)
        self._guard = guard

    @property
    def unguarded(self) -> Any:
        """The wrapped client, untouched: calls through it are neither checked nor metered."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        if name in type(self).refused:
            raise Unmetered(
                f"client.{name} is not metered by spendstream, so it is refused: use a "
                "guarded endpoint, or `wrapped.unguarded` deliberately and record the usage "
                "yourself (guard.admit/record)")
        return getattr(self._inner, name)


class GuardedStream(Passthrough, Generic[T]):
    """A provider's sync stream, passed through chunk by chunk and metered.

    Leaving a ``for`` loop over it early, ``close()`` or the ``with`` block ending ends the
    stream: the connection is released and what was generated is recorded. Other
    attributes (``response``...) are the wrapped stream's.
    """

    def __init__(self, inner: Any, meter: StreamMeter) -> None:
        super().__init__(inner)
        self._meter = meter
        self._iterator: Iterator[T] | None = None

    def __iter__(self) -> Iterator[T]:
        # A fresh generator each time: when a loop is left early CPython drops it at once,
        # and its ``finally`` settles the meter.
        return self._chunks()

    def __next__(self) -> T:
        if self._iterator is None:
            self._iterator = self._chunks()
        return next(self._iterator)

    def _chunks(self) -> Iterator[T]:
        complete = False
        try:
            for chunk in self._inner:
                self._meter.observe(chunk)
                yield chunk
            complete = True
        finally:
            self._meter.settle(complete=complete)
            if not complete:
                self._close_inner()

    def _close_inner(self) -> None:
        try:
            self._inner.close()
        except Exception:
            logger.debug("closing a %s stream failed", self._meter.provider, exc_info=True)

    def close(self) -> None:
        """Stop reading: release the connection and record what was generated."""
        self._meter.settle(complete=False)
        self._close_inner()

    def __enter__(self) -> GuardedStream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Last resort for a stream dropped unread: it was still paid for.
        meter = self.__dict__.get("_meter")
        if meter is not None and not meter.settled:
            meter.settle(complete=False)


class AsyncGuardedStream(Passthrough, Generic[T]):
    """The asyncio form of :class:`GuardedStream`.

    Leaving an ``async for`` loop early settles the stream when asyncio finalizes the
    loop's generator (on the next turns of the event loop); ``await stream.close()`` or
    ``async with`` settle it at once.
    """

    def __init__(self, inner: Any, meter: StreamMeter) -> None:
        super().__init__(inner)
        self._meter = meter
        self._iterator: AsyncIterator[T] | None = None

    def __aiter__(self) -> AsyncIterator[T]:
        return self._chunks()

    async def __anext__(self) -> T:
        if self._iterator is None:
            self._iterator = self._chunks()
        return await self._iterator.__anext__()

    async def _chunks(self) -> AsyncIterator[T]:
        complete = False
        try:
            async for chunk in self._inner:
                self._meter.observe(chunk)
                yield chunk
            complete = True
        finally:
            self._meter.settle(complete=complete)
            if not complete:
                await self._close_inner()

    async def _close_inner(self) -> None:
        try:
            await self._inner.close()
        except Exception:
            logger.debug("closing a %s stream failed", self._meter.provider, exc_info=True)

    async def close(self) -> None:
        """Stop reading: release the connection and record what was generated."""
        self._meter.settle(complete=False)
        await self._close_inner()

    aclose = close

    async def __aenter__(self) -> AsyncGuardedStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __del__(self) -> None:
        meter = self.__dict__.get("_meter")
        if meter is not None and not meter.settled:
            meter.settle(complete=False)
