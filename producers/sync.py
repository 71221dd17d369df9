"""The emitter for applications without an event loop: a private loop in a daemon thread.

``SyncEmitter.emit`` appends to the :class:`Emitter`'s buffer from the caller's thread and
only crosses into the loop's thread when the sender is idle, so a busy application pays
for one lock and one append per event, not for a cross-thread call.

Two process events are handled for the application: at interpreter exit every open
emitter is closed (flushed for at most ``exit_timeout`` seconds), so a script that never
calls ``close`` still delivers; and after ``os.fork()`` (gunicorn ``--preload``, uWSGI,
Celery prefork) the child's emitter, whose thread did not survive the fork, starts a fresh
sender at its first ``emit`` (the parent's buffered events stay the parent's).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
import weakref
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


_OPEN: weakref.WeakSet[SyncEmitter] = weakref.WeakSet()
"""Emitters not closed yet: closed at interpreter exit, renewed in a forked child."""


def _close_at_exit() -> None:
    for emitter in list(_OPEN):
        emitter._close_at_exit()


def _after_fork_in_child() -> None:
    for emitter in list(_OPEN):
        emitter._forked()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)


class SyncEmitter:
    """A thread-safe, non-blocking emitter for threaded or synchronous applications.

    Takes the same arguments as :class:`Emitter`, plus ``exit_timeout``: how long the
    interpreter's exit may wait for buffered events (0: not at all). Constructing it never
    waits for the broker: an unreachable Kafka means buffered events and a logged warning,
    not an error. :meth:`close` (or ``with``) at shutdown is still the way to know whether
    everything was delivered; a forked child gets its own sender.
    """

    def __init__(self, bootstrap_servers: str, topic: str = DEFAULT_TOPIC, *,
                 buffer_size: int = 10_000, linger_ms: int = 5,
                 request_timeout_ms: int = 10_000,
                 spill_dir: str | PathLike[str] | None = None,
                 spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES, pack: bool = True,
                 exit_timeout: float = 5.0, **producer_kwargs: Any) -> None:
        self._args = (bootstrap_servers, topic)
        self._options: dict[str, Any] = dict(
            buffer_size=buffer_size, linger_ms=linger_ms, request_timeout_ms=request_timeout_ms,
            spill_dir=spill_dir, spill_max_bytes=spill_max_bytes, pack=pack, **producer_kwargs)
        self.exit_timeout = exit_timeout
        self._stale = False
        self._respawn_lock = threading.Lock()
        self._closed = False
        self._delivered_at_close = False
        self._spawn()
        _OPEN.add(self)

    def _spawn(self) -> None:
        """Build the emitter and start its loop thread (bad settings raise ConfigError in
        the caller's thread)."""
        self._emitter = Emitter(*self._args, **self._options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="spendstream-emitter", daemon=True)
        self._thread.start()
        try:
            # Emitter.start only schedules the connection, so this returns in milliseconds.
            self._call(self._emitter.start(), timeout=30)
        except BaseException:
            self._stop_thread()
            raise

    def _forked(self) -> None:
        """In a forked child: the loop thread is gone; the next emit starts a new one."""
        self._stale = True
        self._respawn_lock = threading.Lock()  # the parent's may have been held at fork

    def _respawn(self) -> None:
        with self._respawn_lock:
            if self._stale and not self._closed:
                # The inherited buffer holds the parent's events: the parent sends them.
                self._spawn()
                self._stale = False

    def _close_at_exit(self) -> None:
        if not self._closed and not self._stale and self.exit_timeout > 0:
            self.close(self.exit_timeout)

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
        if self._stale:
            try:
                self._respawn()
            except Exception:  # never raise into the app: count it as dropped
                self._emitter.stats.dropped += 1
                return False
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
        _OPEN.discard(self)
        if self._stale:  # a forked child that never emitted: nothing of its own to send
            return True
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
