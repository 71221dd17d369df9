"""The emitter applications call after each model call: buffer in memory, send in the background.

``emit`` must never slow down or break the application it measures, so it only encodes the
event and appends it to a bounded buffer. A background task connects to Kafka (retrying with
backoff while the broker is down), sends the buffer in order and in batches, and keeps every
event it could not deliver for the next attempt: delivery is at-least-once, and the worker
deduplicates redeliveries by ``event_id``. Only a full buffer loses events, and those are
counted and logged.

With a ``spill_dir``, a full buffer does not drop: events go to an append-only spill file
(see :mod:`spendstream.producers._spill`) and are replayed in order when Kafka takes them
again. Once spilling starts, every new event goes to the file until it is drained, so the
publish order stays the order of ``emit`` calls. Events are then dropped (counted, logged)
only when the file cannot be written or reaches its size cap. A file left by a process
that crashed or stopped with events undelivered is replayed by the next emitter started
with the same ``spill_dir`` and topic, before any new event.

With ``pack`` (the default) each round's events go out as one packed record per partition
(see :mod:`spendstream.producers._packing`): the worker's cost is per record, not per event.
A round's records are sent, and their acknowledgements settled, by
:class:`~spendstream.producers._sending.BatchSender`; this module keeps the buffer, the
spill file and the loop around it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections import deque
from itertools import islice
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer

from spendstream.contract.event import UsageEvent
from spendstream.errors import ConfigError
from spendstream.producers._delivery import (
    BACKOFF_MAX,
    Backoff,
    EmitterStats,
    in_emitter,
    quiet_client_chatter,
)
from spendstream.producers._packing import PACK_MAX_BYTES, Message
from spendstream.producers._sending import BatchSender
from spendstream.producers._spill import SpillFile
from spendstream.settings import kafka_bootstrap

if TYPE_CHECKING:
    from spendstream.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "spendstream.usage"
_MAX_BATCH = 500
"""Events handed to the producer per round: big enough to amortise a round trip."""
DEFAULT_SPILL_MAX_BYTES = 256 * 1024 * 1024
_DROP_LOG_INTERVAL = 10.0
"""Seconds between two drop warnings, so a full buffer cannot flood the application's log."""
# We hand the producer bytes; a serializer would encode them twice.
_RESERVED = frozenset({"key_serializer", "value_serializer", "loop"})
_PRODUCER_PARAMS = frozenset(inspect.signature(AIOKafkaProducer).parameters) - _RESERVED

quiet_client_chatter(log)


class Emitter:
    """Publishes usage events to Kafka without ever blocking or failing the caller.

    Use it from the event loop it was started on; a threaded application uses
    :class:`spendstream.producers.SyncEmitter`. Keyword arguments the emitter does not
    name itself (``security_protocol``, ``sasl_mechanism``, ``sasl_plain_username``,
    ``ssl_context``, ``acks``, ``compression_type``, ...) go to ``AIOKafkaProducer``.

    ``buffer_size`` events wait in memory; with ``spill_dir``, what does not fit goes to a
    spill file there (at most ``spill_max_bytes``) instead of being dropped. ``pack=False``
    sends one record per event, as emitters before packed records did.
    :meth:`from_settings` builds one from the process settings.
    """

    def __init__(self, bootstrap_servers: str, topic: str = DEFAULT_TOPIC, *,
                 buffer_size: int = 10_000, linger_ms: int = 5,
                 request_timeout_ms: int = 10_000,
                 spill_dir: str | PathLike[str] | None = None,
                 spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES, pack: bool = True,
                 **producer_kwargs: Any) -> None:
        if buffer_size < 1:
            raise ConfigError(f"buffer_size must be at least 1, not {buffer_size}")
        if pack and "partitioner" in producer_kwargs:
            # The worker reads a packed record's events as those of its partition.
            raise ConfigError("packed records follow Kafka's default partitioner; pass "
                              "pack=False to use your own partitioner")
        unknown = set(producer_kwargs) - _PRODUCER_PARAMS
        if unknown:
            raise ConfigError(f"unknown Kafka producer setting(s): {', '.join(sorted(unknown))}")
        self.topic = topic
        # Accept SPENDSTREAM_KAFKA_URL as it is (kafka://h1:9092,h2:9092) or plain host:port.
        try:
            bootstrap_servers = kafka_bootstrap(bootstrap_servers)
        except ValueError as e:
            raise ConfigError(f"bootstrap_servers: {e}") from e
        self.bootstrap_servers = bootstrap_servers
        self.buffer_size = buffer_size
        self._request_timeout = request_timeout_ms / 1000
        # Within the producer's limit (aiokafka's default 1 MiB), with a margin for the key,
        # header and batch overhead it counts as well.
        self._sender = BatchSender(
            topic, pack=pack, request_timeout=self._request_timeout,
            pack_max_bytes=min(PACK_MAX_BYTES,
                               producer_kwargs.get("max_request_size", 1048576) - 1024))
        # acks="all": a spend record acknowledged by one replica only can vanish on failover.
        self._producer_kwargs: dict[str, Any] = {
            "acks": "all", "client_id": "spendstream-emitter", **producer_kwargs,
            "bootstrap_servers": bootstrap_servers, "linger_ms": linger_ms,
            "request_timeout_ms": request_timeout_ms,
        }
        self._pending: deque[Message] = deque()
        self._inflight: list[Message] = []
        self._inflight_spilled = False  # the in-flight batch was read from the spill file
        self._lock = threading.Lock()  # emit may come from other threads (SyncEmitter)
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._idle = False
        self._closed = False
        self._delivered_at_stop = False
        self._in_outage = False
        self._next_drop_log = 0.0
        self._unlogged_drops = 0
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self.stats = EmitterStats(_buffered=self._count_buffered)
        self._spill = (None if spill_dir is None else
                       SpillFile.claim(Path(spill_dir), topic, spill_max_bytes))
        # Events an earlier process left go out before any new one: new ones queue behind.
        self._spilling = self._spill is not None and self._spill.pending > 0

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> Emitter:
        """An emitter for the process settings: Kafka URL, topic, security
        (``SPENDSTREAM_KAFKA_SECURITY_PROTOCOL``, ...), spill file (``SPENDSTREAM_SPILL_DIR``,
        default ``<state_dir>/spill``) and packing (``SPENDSTREAM_PACK_EVENTS``).
        ``options`` win."""
        return cls(settings.kafka_url, settings.topic,
                   **{**settings_options(settings), **options})

    @property
    def spill_path(self) -> Path | None:
        """The spill file this emitter holds, if any."""
        return None if self._spill is None else self._spill.path

    def _count_buffered(self) -> int:
        spill = self._spill
        return len(self._pending) + len(self._inflight) + (spill.pending if spill else 0)

    async def start(self) -> None:
        """Start connecting and sending in the background; returns at once.

        A broker that is down is not an error here: the emitter keeps retrying and buffers
        meanwhile. Raises :class:`ConfigError` only when the producer settings are invalid.
        """
        if self._task is not None:
            return
        try:
            first = self._new_producer()
        except (TypeError, ValueError, AssertionError) as e:
            raise ConfigError(f"invalid Kafka producer settings: {e}") from e
        self._task = asyncio.get_running_loop().create_task(
            self._run(first), name="spendstream-emitter")

    def emit(self, event: UsageEvent) -> bool:
        """Queue one event for delivery; True if accepted. Never raises, never blocks."""
        accepted = self._offer(event)
        if accepted and self._idle:
            self._wake()
        return accepted

    def _offer(self, event: UsageEvent) -> bool:
        """Encode and buffer an event (thread-safe); the caller wakes the sender."""
        try:
            message = (event.key, event.to_json())
        except Exception:
            # A bug in the caller's data or ours must not break the model call it measures;
            # the traceback is logged with the (rate-limited) drop warning.
            with self._lock:
                self.stats.errors += 1
                self._count_dropped(1, "event could not be encoded", exc_info=True)
            return False
        with self._lock:
            if self._closed:
                self._count_dropped(1, "emitter is stopped")
                return False
            if self._spilling or len(self._pending) + len(self._inflight) >= self.buffer_size:
                return self._spill_one(message)
            self._pending.append(message)
            self.stats.emitted += 1
        return True

    def _spill_one(self, message: Message) -> bool:
        """Append to the spill file, or drop when there is none or it is full (lock held)."""
        spill = self._spill
        if spill is None:
            self._count_dropped(1, f"buffer full ({self.buffer_size} events unsent)")
            return False
        if not self._spilling:
            self._spilling = True
            log.warning("usage event buffer full (%d events unsent): spilling to %s until "
                        "Kafka catches up", self.buffer_size, spill.path)
        accepted = spill.append(*message)
        if accepted:
            self.stats.emitted += 1
            self.stats.spilled += 1
        else:
            self._count_dropped(1, f"buffer full and spill file {spill.path} at its "
                                f"{spill.max_bytes}-byte cap")
        self._collect_spill_losses()
        return accepted

    def _collect_spill_losses(self) -> None:
        """Count events a failed spill write lost (lock held)."""
        if self._spill is not None and self._spill.lost:
            self._count_dropped(self._spill.collect_lost(),
                                f"cannot write spill file {self._spill.path}: {self._spill.error}")

    def _wake(self) -> None:
        """Wake the sender task; called on the loop's thread only."""
        self._idle = False
        self._wakeup.set()

    def _count_dropped(self, n: int, reason: str, exc_info: bool = False) -> None:
        """Count lost events and warn at most once per interval (caller holds the lock)."""
        self.stats.dropped += n
        self._unlogged_drops += n
        now = time.monotonic()
        if now >= self._next_drop_log:
            log.warning("dropped %d usage event(s) since the last warning, the latest "
                        "because: %s; spend is under-counted", self._unlogged_drops, reason,
                        exc_info=exc_info)
            self._unlogged_drops = 0
            self._next_drop_log = now + _DROP_LOG_INTERVAL

    async def flush(self, timeout: float) -> bool:
        """Wait until every buffered event is acknowledged; False if ``timeout`` ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.stats.buffered:
            remaining = deadline - loop.time()
            if remaining <= 0 or self._task is None or self._task.done():
                return False
            self._progress.clear()
            if self._idle:
                self._wake()
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                return self.stats.buffered == 0
        return True

    async def stop(self, timeout: float = 5.0) -> bool:
        """Refuse new events, flush for up to ``timeout`` seconds, then close.

        Returns True when every accepted event was delivered; events still buffered are
        counted as dropped. Calling it again returns the first call's answer.
        """
        with self._lock:
            if self._closed:
                return self._delivered_at_stop
            self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delivered = await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            # Bounded: a cancel that lands inside the producer's own cleanup can be
            # swallowed, and stop() must never hang the application's shutdown.
            _, pending = await asyncio.wait({self._task}, timeout=max(deadline - loop.time(),
                                                                      1.0))
            if pending:
                log.warning("the sender did not stop within %.1fs; closing anyway", timeout)
        with self._lock:
            left = self._count_buffered()
            spill_path, kept = self.spill_path, self._keep_in_spill()
            self._pending.clear()
            self._inflight = []
            self.stats.dropped += left - kept
        if kept:
            log.warning("stopped with %d usage event(s) undelivered; kept in %s for the next "
                        "emitter started with this spill directory", kept, spill_path)
        if left > kept:
            log.warning("stopped with %d usage event(s) undelivered; they are lost "
                        "(%d dropped in all)", left - kept, self.stats.dropped)
        if self._producer is not None:
            await self._close_producer(self._producer, max(deadline - loop.time(), 0.5))
            self._producer = None
        self._delivered_at_stop = delivered = delivered and not left
        return delivered

    def _keep_in_spill(self) -> int:
        """At stop: move what memory holds to the spill file, in order, and close it;
        return how many undelivered events it keeps (lock held)."""
        spill, self._spill = self._spill, None
        self._spilling = False  # a sender that outlived stop() must not look for the file
        if spill is None:
            return 0
        spill.rewind()  # a batch read from the file and not delivered is still in it
        memory = ([] if self._inflight_spilled else self._inflight) + list(self._pending)
        try:
            if memory and spill.pending:  # memory holds the older events
                spill.prepend(memory)
            else:
                for key, value in memory:
                    spill.append(key, value, cap=False)
            self.stats.spilled += len(memory)
        except OSError as e:
            log.error("cannot write %d usage event(s) to spill file %s at stop: %s",
                      len(memory), spill.path, e)
        spill.close()
        return spill.pending

    async def __aenter__(self) -> Emitter:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # -- the background task ----------------------------------------------------------

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(**self._producer_kwargs)

    async def _run(self, first: AIOKafkaProducer) -> None:
        """Connect, send until something unexpected happens, and start over."""
        in_emitter.set(True)  # this task's own context: see ClientChatter
        producer: AIOKafkaProducer | None = first
        while True:
            connected = await self._connect(producer)
            producer = None
            try:
                await self._send_loop(connected)
            except Exception:
                # A bug here must not end delivery for the life of the process.
                log.exception("usage event sender failed; restarting it")
                with self._lock:
                    self.stats.errors += 1
                await self._close_producer(connected, self._request_timeout)
                self._producer = None
                await asyncio.sleep(BACKOFF_MAX)

    async def _connect(self, producer: AIOKafkaProducer | None) -> AIOKafkaProducer:
        backoff = Backoff()
        while True:
            # Held on self while connecting, so stop() closes it if it cancels us mid-way.
            self._producer = producer = producer or self._new_producer()
            try:
                await producer.start()
            except Exception as e:  # KafkaConnectionError, OSError, timeouts, auth...
                self._outage(f"cannot connect to Kafka at {self.bootstrap_servers}: {e!r}")
                await self._close_producer(producer, self._request_timeout)
                self._producer = producer = None
                await backoff.sleep()
                continue
            self._recovered()
            return producer

    async def _send_loop(self, producer: AIOKafkaProducer) -> None:
        backoff = Backoff()
        while True:
            if not self._inflight:
                if not self._pending and not self._spilling:
                    self._progress.set()
                    await self._wait_for_events()
                self._take_batch()
                if not self._inflight:  # a spurious wake-up, or the spill file drained
                    continue
            sent = self.stats.sent
            failed = await self._send_batch(producer)
            with self._lock:
                self._inflight = failed  # retried, ahead of newer events, on the next round
                if self._inflight_spilled:
                    self.stats.replayed += self.stats.sent - sent
                    if not failed and self._spill is not None:
                        self._spill.commit()
            self._progress.set()
            if failed:
                await backoff.sleep()
            else:
                backoff.reset()
                self._recovered()

    def _take_batch(self) -> None:
        """Next batch: from memory, else (while spilling) from the spill file."""
        with self._lock:
            spill = self._spill
            if self._pending or not self._spilling or spill is None:
                self._spilling = self._spilling and spill is not None  # never spin on none
                # Copy before popping so ``buffered`` never under-counts for other threads.
                self._inflight = list(islice(self._pending, _MAX_BATCH))
                for _ in self._inflight:
                    self._pending.popleft()
                self._inflight_spilled = False
                return
            end = spill.take_end()
            self._collect_spill_losses()
            if spill.pending == 0:  # drained: new events use memory again
                spill.reset()
                self._spilling = False
                log.warning("spill file drained: %d usage event(s) replayed from %s so far",
                            self.stats.replayed, spill.path)
                return
        try:  # outside the lock: emit() must not wait for the disk
            batch, pos, damaged = spill.read(_MAX_BATCH, end)
        except OSError as e:
            spill.error, batch, pos, damaged = e, [], 0, 0
        with self._lock:
            if not batch and not damaged:  # unreadable: give up on it rather than spin
                log.error("cannot read spill file %s (%s)", spill.path, spill.error or "damaged")
                self._count_dropped(spill.discard(), f"spill file {spill.path} unreadable")
                self._spilling = False
                return
            spill.consumed(len(batch) + damaged, pos)
            if damaged:
                self._count_dropped(damaged, f"damaged record in spill file {spill.path}")
            self._inflight, self._inflight_spilled = batch, True

    async def _wait_for_events(self) -> None:
        # Publish "idle" before the last look, so an emit from another thread either lands
        # before that look or sees the flag and wakes us.
        self._idle = True
        if self._pending or self._spilling:
            self._idle = False
            return
        await self._wakeup.wait()
        self._wakeup.clear()
        self._idle = False

    async def _send_batch(self, producer: AIOKafkaProducer) -> list[Message]:
        """Send the in-flight batch; return the events to retry, in their original order."""
        batch = self._inflight
        outcome = await self._sender.send(producer, batch)
        for error in outcome.rejected:
            log.error("usage event rejected by Kafka and dropped: %r", error)
        with self._lock:
            self.stats.sent += outcome.sent
            self.stats.errors += len(outcome.rejected) + bool(outcome.failed)
            for error in outcome.rejected:
                self._count_dropped(1, f"rejected by Kafka: {error!r}")
        if outcome.failed:
            self._outage(f"cannot deliver usage events to Kafka topic {self.topic!r}: "
                         f"{outcome.error!r}")
        return [batch[i] for i in outcome.failed]

    def _outage(self, message: str) -> None:
        """Log the first failure of an outage as a warning, the repeats at debug level."""
        if self._spill is not None:
            with self._lock:  # spilled events reach the file while the broker is away
                if self._spill is not None:
                    self._spill.flush()
                    self._collect_spill_losses()
        if self._in_outage:
            log.debug(message)
            return
        self._in_outage = True
        log.warning("%s; buffering up to %d events and retrying", message, self.buffer_size)

    def _recovered(self) -> None:
        if self._in_outage:
            self._in_outage = False
            log.warning("Kafka accepts usage events again (%d still buffered)",
                        self.stats.buffered)

    async def _close_producer(self, producer: AIOKafkaProducer, timeout: float) -> None:
        """Close a producer without letting a dead broker hold the caller past ``timeout``."""
        try:
            await asyncio.wait_for(producer.stop(), timeout)
        except Exception as e:
            log.debug("closing the Kafka producer failed: %r", e)


def settings_options(settings: Settings) -> dict[str, Any]:
    """Emitter keyword arguments from the process settings: Kafka security, spill file and
    packing."""
    from spendstream.kafka_auth import kafka_client_kwargs

    return {**kafka_client_kwargs(settings), "spill_dir": settings.emitter_spill_dir,
            "spill_max_bytes": settings.spill_max_bytes, "pack": settings.pack_events}

