"""The emitter's delivery bookkeeping: its counters, its retry backoff, and the log filter
that keeps the Kafka client's per-attempt errors out of the application's log."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
"""Seconds: the first retry delay, and the ceiling it doubles up to."""

_CLIENT_LOGGERS = ("aiokafka", "aiokafka.conn", "aiokafka.cluster",
                   "aiokafka.producer.producer", "aiokafka.producer.sender")

in_emitter: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "spendstream_emitter", default=False)
"""Set in the emitter's task; the tasks the Kafka client spawns from it inherit it."""


def _no_buffer() -> int:
    return 0


@dataclass
class EmitterStats:
    """Counters of one emitter, safe to read from any thread.

    ``emitted``: events accepted by ``emit``. ``sent``: events the broker acknowledged.
    ``dropped``: events lost: refused by ``emit`` (buffer full, emitter stopped, event not
    encodable) or still buffered when ``stop`` gave up. ``errors``: failures caught and
    logged instead of raised (events that did not encode, send attempts that failed).
    ``buffered``: events accepted and not yet acknowledged (in memory or the spill file).
    ``spilled``: events written to the spill file because memory was full (or at stop).
    ``replayed``: events read back from the spill file and acknowledged by the broker.
    """

    emitted: int = 0
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    spilled: int = 0
    replayed: int = 0
    _buffered: Callable[[], int] = field(default=_no_buffer, repr=False, compare=False)

    @property
    def buffered(self) -> int:
        """Events waiting in memory for delivery (including those in flight)."""
        return self._buffered()


class Backoff:
    """Exponential backoff with jitter, so many app replicas do not reconnect in lockstep."""

    def __init__(self) -> None:
        self._delay = BACKOFF_FIRST

    def reset(self) -> None:
        """Start again from the shortest delay, after a success."""
        self._delay = BACKOFF_FIRST

    async def sleep(self) -> None:
        """Wait the current delay (with jitter), then double it up to the ceiling."""
        await asyncio.sleep(random.uniform(self._delay / 2, self._delay))
        self._delay = min(self._delay * 2, BACKOFF_MAX)


class ClientChatter(logging.Filter):
    """Turn the Kafka client's per-attempt errors inside the emitter's tasks into debug records.

    aiokafka logs an ERROR for every refused connection and failed request; during an
    outage that would be a line every few seconds in the application's log, which the
    emitter replaces with one warning per outage. Only records logged while
    :data:`in_emitter` is set are touched, so the client's records from other code in the
    application (its own consumers, say) are left alone. The demoted records are kept when
    ``logger`` (the emitter's) is enabled for debug.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass records from outside the emitter unchanged; demote the emitter's."""
        if not in_emitter.get():
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self._logger.isEnabledFor(logging.DEBUG)


def quiet_client_chatter(logger: logging.Logger) -> None:
    """Install :class:`ClientChatter` on the Kafka client's loggers (once per process)."""
    chatter = ClientChatter(logger)
    for name in _CLIENT_LOGGERS:
        logging.getLogger(name).addFilter(chatter)
