"""The ledger inside ``spendstream worker``: a service that runs the consumer in a thread.

The consumer gets its own thread and event loop, so nothing it does (decoding and pricing
a batch, waiting on a slow PostgreSQL, reconnecting) can hold up the faust agents' loop:
flags and alerts never wait for the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from mode import Service

from spendstream.ledger.consumer import LedgerConsumer

log = logging.getLogger("spendstream.ledger")


class LedgerService(Service):
    """Starts :class:`LedgerConsumer` with the worker and stops it (bounded) with it."""

    def __init__(self, consumer: LedgerConsumer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.consumer = consumer
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    async def on_start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="spendstream-ledger",
                                        daemon=True)
        self._thread.start()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    loop.run_until_complete(self.consumer.run(self._stop))
                except Exception:
                    # The Kafka side failed (e.g. broker unreachable at start): the ledger
                    # restarts from its committed offsets; the agents are unaffected.
                    log.exception("ledger: consumer failed; restarting in 5s")
                    loop.run_until_complete(_sleep_unless(self._stop, 5.0))
        finally:
            loop.close()

    async def on_stop(self) -> None:
        if self._thread is None:
            return
        self._ready.wait(5)
        if self._loop is not None and self._stop is not None:
            # RuntimeError: its loop is closed already, the thread is ending.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        thread = self._thread
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 15.0)
        if thread.is_alive():
            log.warning("ledger: consumer did not stop within 15s; its last batch will be "
                        "re-read at the next start (the database skips what is already in)")


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
