"""One round of the emitter's delivery: a batch of events handed to the Kafka producer
as records (packed per partition, or one per event), and what the acknowledgements
decide for each event: delivered, to be retried, or given up (a record the broker will
never take, which would otherwise stall every event behind it)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from spendstream.producers._packing import Message, Packed, pack, singles, split

log = logging.getLogger("spendstream.producers.emitter")
"""The emitter's own logger: an application configures one name for all of it."""


@dataclass
class Outcome:
    """What became of one batch."""

    failed: list[int] = field(default_factory=list)
    """Positions in the batch to retry, in order."""
    sent: int = 0
    """Events the broker acknowledged."""
    rejected: list[BaseException] = field(default_factory=list)
    """One error per event given up: alone in a record, still too large for the broker."""
    error: BaseException | None = None
    """The first error of what is to be retried."""


class BatchSender:
    """Sends batches to ``topic``; packs at most ``pack_max_bytes`` per record (less once
    the broker refused a record as too large) and waits at most ``request_timeout``
    seconds to hand a batch over."""

    def __init__(self, topic: str, *, pack: bool, pack_max_bytes: int,
                 request_timeout: float) -> None:
        self.topic = topic
        self.pack = pack
        self.pack_max_bytes = pack_max_bytes
        self.request_timeout = request_timeout

    async def send(self, producer: AIOKafkaProducer, batch: list[Message]) -> Outcome:
        """Send ``batch`` once; a packed record the broker refused as too large goes again,
        split, in the same call."""
        unsettled = set(range(len(batch)))  # positions neither acknowledged nor given up
        outcome = Outcome()
        records: list[Packed] | None = None  # packed below, once the topic's metadata is in
        while records is None or records:  # a second round: packed records split up
            queued: list[tuple[Packed, asyncio.Future[Any]]] = []
            try:
                # send() waits for topic metadata, which hangs while the broker is unreachable.
                async with asyncio.timeout(self.request_timeout):
                    if records is None:
                        records = await self._records(producer, batch)
                    await self._hand_over(producer, records, queued, unsettled, outcome)
            except Exception as e:
                outcome.error = outcome.error or e
            records = await self._settle(queued, unsettled, outcome)
        outcome.failed = sorted(unsettled)
        return outcome

    async def _records(self, producer: AIOKafkaProducer, batch: list[Message]) -> list[Packed]:
        if not self.pack:
            return singles(batch)
        partitions = await producer.partitions_for(self.topic)
        return pack(batch, len(partitions), self.pack_max_bytes)

    async def _hand_over(self, producer: AIOKafkaProducer, records: list[Packed],
                         queued: list[tuple[Packed, asyncio.Future[Any]]],
                         unsettled: set[int], outcome: Outcome) -> None:
        """Queue ``records`` in the producer; one over its size limit is split or given up."""
        for record in records:
            try:
                queued.append((record, await producer.send(
                    self.topic, record.value, key=record.key, partition=record.partition,
                    headers=list(record.headers))))
            except MessageSizeTooLargeError as e:
                if len(record.messages) > 1:
                    await self._hand_over(producer, split(record), queued, unsettled, outcome)
                else:
                    outcome.rejected.append(e)
                    unsettled.difference_update(record.positions)

    async def _settle(self, queued: list[tuple[Packed, asyncio.Future[Any]]],
                      unsettled: set[int], outcome: Outcome) -> list[Packed]:
        """Wait for the acknowledgements and settle what they decide; return the packed
        records the broker refused as too large, split up to go again."""
        if not queued:
            return []
        # The producer fails a batch after request_timeout; the margin is for its retries.
        done, _ = await asyncio.wait([f for _, f in queued], timeout=2 * self.request_timeout + 1)
        resend: list[Packed] = []
        for record, fut in queued:
            if fut not in done:
                # Retried now; the producer may still deliver it (a duplicate, fine) or
                # fail it later, and that outcome must not surface as an unretrieved error.
                fut.add_done_callback(_outcome)
            exc = _outcome(fut) if fut in done else TimeoutError("no acknowledgement")
            if exc is None:
                outcome.sent += len(record.messages)
                unsettled.difference_update(record.positions)
            elif not isinstance(exc, MessageSizeTooLargeError):
                outcome.error = outcome.error or exc
            elif len(record.messages) > 1:
                # Sent after the round's later records of that partition: those few events
                # lose their order (event time, not order, places them in windows).
                resend += split(record)
                self._shrink_packs(len(record.value), exc)
            else:
                outcome.rejected.append(exc)
                unsettled.difference_update(record.positions)
        return resend

    def _shrink_packs(self, refused: int, error: BaseException) -> None:
        """Pack smaller from now on: the broker's limit is below what the producer's was."""
        if refused // 2 < self.pack_max_bytes:
            self.pack_max_bytes = refused // 2
            log.warning("Kafka refused a packed record of %d bytes (%r); packing at most %d "
                        "bytes from now on", refused, error, self.pack_max_bytes)


def _outcome(fut: asyncio.Future[Any]) -> BaseException | None:
    if fut.cancelled():
        return asyncio.CancelledError()
    return fut.exception()
