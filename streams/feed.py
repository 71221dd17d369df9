"""The worker's own queue of fetched records: whole fetches of one topic, waiting for the
loop that counts them, and what of them was counted (what the consumer commits;
``streams/consumer.py``, 5)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any

from faust.types import TP

RECORD_OVERHEAD = 256
"""What a fetched record costs in memory besides its value (aiokafka's ``ConsumerRecord``,
its key and headers): with one event per record, about as much as the value itself."""


Chunk = tuple[TP, list[Any]]
"""One partition's records from one fetch (aiokafka ``ConsumerRecord`` s, in offset order)."""


class BatchFeed:
    """The fetched records of one topic, waiting for the loop that counts them.

    :meth:`put` takes one partition's records of a fetch (it waits while :attr:`limit`
    bytes are queued: the fetch waits with it); :meth:`take` hands the loop everything
    queued (at least one fetch, up to about ``most`` records) and :meth:`finished` marks it
    counted, which is what the consumer commits. :meth:`settle` drops what is queued and
    waits for the batch in hand: before a rebalance or a stop, so no record is counted
    after its partition is gone, and nothing queued is committed.
    """

    def __init__(self, topic: str, limit: int) -> None:
        self.topic = topic
        self.limit = limit
        self.counted: dict[TP, int] = {}
        """Per partition, the offset after the last record counted (what may be committed)."""
        self.read: dict[TP, int] = {}
        """Per partition, the offset of the last record queued."""
        self._chunks: deque[tuple[TP, list[Any], int]] = deque()
        """Queued chunks, each with its :meth:`weight` (worked out once, on :meth:`put`)."""
        self._size = 0
        self._epoch = 0
        self._more = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def queued(self) -> int:
        """Bytes waiting to be taken (values, and :data:`RECORD_OVERHEAD` per record)."""
        return self._size

    @staticmethod
    def weight(records: list[Any]) -> int:
        """What ``records`` count against :attr:`limit`."""
        return (sum(len(r.value) if r.value else 0 for r in records)
                + RECORD_OVERHEAD * len(records))

    async def put(self, tp: TP, records: list[Any]) -> None:
        """Queue one partition's records (in offset order); dropped if :meth:`settle` runs
        while this waits for room."""
        epoch = self._epoch
        while self._size >= self.limit:
            self._room.clear()
            await self._room.wait()
            if epoch != self._epoch:
                return
        weight = self.weight(records)
        self._chunks.append((tp, records, weight))
        self._size += weight
        self.read[tp] = records[-1].offset
        self._more.set()

    async def take(self, most: int) -> list[Chunk]:
        """Everything queued, at least one chunk and whole chunks up to ``most`` records;
        waits for a first one. The caller must call :meth:`finished` with it, or
        :meth:`abandon`."""
        while not self._chunks:
            self._more.clear()
            await self._more.wait()
        taken: list[Chunk] = []
        n = 0
        while self._chunks and (not taken or n + len(self._chunks[0][1]) <= most):
            tp, records, weight = self._chunks.popleft()
            taken.append((tp, records))
            n += len(records)
            self._size -= weight
        self._room.set()
        self._idle.clear()
        return taken

    def finished(self, chunks: Iterable[Chunk]) -> None:
        """The chunks :meth:`take` gave are counted: their offsets may be committed."""
        counted = self.counted
        for tp, records in chunks:
            end = records[-1].offset + 1
            if end > counted.get(tp, -1):
                counted[tp] = end
        self._idle.set()

    def abandon(self) -> None:
        """The batch in hand was not counted (the loop stops): nothing of it is committed."""
        self._idle.set()

    async def settle(self) -> None:
        """Drop what is queued; wait until the batch in hand is finished or abandoned."""
        self._epoch += 1
        self._chunks.clear()
        self._size = 0
        self._room.set()
        await self._idle.wait()

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions gone (revoked): nothing more to commit or report for them."""
        for tp in tps:
            self.counted.pop(tp, None)
            self.read.pop(tp, None)
