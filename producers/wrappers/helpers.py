"""The SDKs' stream helpers, metered: ``messages.stream()``, ``chat.completions.stream()``
and ``responses.stream()``, sync and async.

Each helper returns a manager whose ``with`` block opens the request and yields the SDK's
own stream object (``text_stream``, ``get_final_message()``, ``until_done()``...). That
object reads every raw server event from its ``_raw_stream`` attribute, whichever of its
methods the application uses. The manager here puts a :class:`GuardedStream` in that
attribute before anything is read, so every raw event passes the provider's chunk reader;
the block's end settles the meter (exactly once: a stream read to its end records the
provider's usage, one left early records what was generated, estimated).

This relies on one private attribute of both SDKs; a test pins it
(``tests/integration/test_wrappers_paths.py``), and when it is missing the stream is
closed and :class:`~spendstream.errors.Unmetered` raised: never an unmetered answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from spendstream.errors import Unmetered
from spendstream.producers.wrappers.streams import (
    AsyncGuardedStream,
    GuardedStream,
    StreamMeter,
)

RAW = "_raw_stream"
"""The SDK stream object's attribute holding the raw server-sent event stream."""


def _missing(stream: Any) -> Unmetered:
    return Unmetered(
        f"spendstream cannot meter {type(stream).__name__}: this SDK version keeps no "
        f"{RAW}; use create(stream=True) instead, or pin a supported SDK version")


class GuardedStreamManager:
    """A sync stream helper's manager whose stream is metered; see the module docstring."""

    def __init__(self, manager: Any, meter: StreamMeter, failed: Callable[[], None]) -> None:
        self._manager = manager
        self._meter = meter
        self._failed = failed

    def __enter__(self) -> Any:
        try:
            stream = self._manager.__enter__()
        except BaseException:
            self._failed()
            raise
        raw = getattr(stream, RAW, None)
        if raw is None:
            self._manager.__exit__(None, None, None)
            self._meter.settle(complete=False)
            raise _missing(stream)
        setattr(stream, RAW, GuardedStream(raw, self._meter))
        return stream

    def __exit__(self, *exc: Any) -> None:
        try:
            self._manager.__exit__(*exc)
        finally:
            self._meter.settle(complete=False)  # no-op when the stream was read to its end


class AsyncGuardedStreamManager:
    """The asyncio form of :class:`GuardedStreamManager` (``async with``); ``open_``
    admits the call and opens the SDK's manager when the block is entered."""

    def __init__(self, open_: Callable[[], Awaitable[tuple[Any, StreamMeter,
                                                            Callable[[], None]]]]) -> None:
        self._open = open_
        self._manager: Any = None
        self._meter: StreamMeter | None = None

    async def __aenter__(self) -> Any:
        self._manager, meter, failed = await self._open()
        self._meter = meter
        try:
            stream = await self._manager.__aenter__()
        except BaseException:
            failed()
            raise
        raw = getattr(stream, RAW, None)
        if raw is None:
            await self._manager.__aexit__(None, None, None)
            meter.settle(complete=False)
            raise _missing(stream)
        setattr(stream, RAW, AsyncGuardedStream(raw, meter))
        return stream

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._manager.__aexit__(*exc)
        finally:
            if self._meter is not None:
                self._meter.settle(complete=False)
