"""The emitter for applications without an event loop: a private loop in a daemon thread.

``SyncEmitter.emit`` appends to the :class:`Emitter`'s buffer from the caller's thread and
only crosses into the loop's thread when the sender is idle, so a busy application pays
for one lock and one append per event, not for a cross-thread call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from spendstream.contract.event import UsageEvent
from spendstream.producers._delivery import EmitterStats
from spendstream.producers.emitter import (
    DEFAULT_SPILL_MAX_BYTES,
    DEFAULT_TOPIC,
    Emitter,
    settings_options,
)

if TYPE_CHECKING:
    from spendstream.settings import Settings


class SyncEmitter:
    """A thread-safe, non-blocking emitter for threaded or synchronous applications.

    Takes the same arguments as :class:`Emitter`. Constructing it never waits for the
    broker: an unreachable Kafka means buffered events and a logged warning, not an error.
    Call :meth:`close` (or use ``with``) before exit, or buffered events are lost with the
    daemon thread.
    """

    def __init__(self, bootstrap_servers: str, topic: str = DEFAULT_TOPIC, *,
                 buffer_size: int = 10_000, linger_ms: int = 5,
                 request_timeout_ms: int = 10_000,
                 spill_dir: str | PathLike[str] | None = None,
                 spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES, pack: bool = True,
                 **producer_kwargs: Any) -> None:
        # Built here so that bad settings raise ConfigError in the caller's thread.
        self._emitter = Emitter(bootstrap_servers, topic, buffer_size=buffer_size,
                                linger_ms=linger_ms, request_timeout_ms=request_timeout_ms,
                                spill_dir=spill_dir, spill_max_bytes=spill_max_bytes,
                                pack=pack, **producer_kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="spendstream-emitter", daemon=True)
        self._thread.start()
        self._closed = False
        self._delivered_at_close = False
        try:
            # Emitter.start only schedules the connection, so this returns in milliseconds.
            self._call(self._emitter.start(), timeout=30)
        except BaseException:
            self._stop_thread()
            raise

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> SyncEmitter:
        """The same as :meth:`Emitter.from_settings`, for threaded applications."""
        return cls(settings.kafka_url, settings.topic,
                   **{**settings_options(settings), **options})

    @property
    def spill_path(self) -> Path | None:
        """The spill file the emitter holds, if any."""
        return self._emitter.spill_path

    @property
    def stats(self) -> EmitterStats:
        """The emitter's counters (see :class:`EmitterStats`)."""
        return self._emitter.stats

    def emit(self, event: UsageEvent) -> bool:
        """Queue one event from any thread; True if accepted. Never raises, never blocks."""
        emitter = self._emitter
        accepted = emitter._offer(event)
        if accepted and emitter._idle:
            emitter._idle = False  # spare the other callers a cross-thread wake-up
            # RuntimeError: the loop closed meanwhile, and close() counted what was left.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(emitter._wake)
        return accepted

    def flush(self, timeout: float) -> bool:
        """Block until every buffered event is acknowledged; False if ``timeout`` ran out."""
        if self._closed:
            return self.stats.buffered == 0
        try:
            return bool(self._call(self._emitter.flush(timeout), timeout + 1))
        except concurrent.futures.TimeoutError:
            return False

    def close(self, timeout: float = 5.0) -> bool:
        """Flush for up to ``timeout`` seconds, stop the emitter and its thread.

        Returns True when every accepted event was delivered. Idempotent.
        """
        if self._closed:
            return self._delivered_at_close
        self._closed = True
        try:
            self._delivered_at_close = bool(self._call(self._emitter.stop(timeout), timeout + 5))
        except concurrent.futures.TimeoutError:
            self._delivered_at_close = False
        self._stop_thread()
        return self._delivered_at_close

    def _stop_thread(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> SyncEmitter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
