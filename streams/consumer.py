"""The worker's faust app class: faust's own, with its Kafka consumer bent in three places.

Everything faust is bent for lives here, each piece pinned by a test of the faust or
aiokafka behaviour it relies on (``tests/unit/test_worker_consumer.py``).

**Invariant.** A source offset is committed (to Kafka by faust, or to the changelog with
the state) only after every event before it was counted or dead-lettered; a restart
resumes from the first uncounted event, whatever the broker answers for end offsets.
faust acks a ``take_events`` batch after the agent's body is done with it and flushes the
producer (the changelog) before it commits; the agent never lets one event fail a batch
(``streams/app.py``). What faust does not give, this module adds:

1. *Never drain the usage partitions by accident.* faust hands aiokafka its live, mutable
   set of active partitions; table recovery empties that set in place while a fetch waits,
   and aiokafka's ``Fetcher.fetched_records`` reads an empty set as "no filter": it drains
   every buffered partition and moves each position to its end, and faust then drops
   those records as "not active" (issue 11; ``/work/shared/notes/restart-stall.md``).
   :meth:`_ConsumerThread.getmany` passes a frozen copy and fetches nothing when it is
   empty.
2. *A partition with no committed offset goes back to the start.* After a rebalance
   faust seeks each partition to its committed offset through aiokafka's
   ``seek_to_committed``, which seeks only when that offset is above 0: a position moved
   by a fetch whose records were dropped would stay where it is. Here every source
   partition without a committed offset is sent back to the reset position (earliest, as
   ``build_app`` configures); dedup absorbs the replay.
3. *Changelog recovery reads to the true end.* faust replays a table's changelog up to
   the end offset the broker answers to ListOffsets(latest), then pauses it for good. The
   embedded broker answers with the base offset of the last record batch + 1 (105 records
   in two batches: 101), so the replay could stop before the tail of the state, whose
   source offsets may already be committed. :meth:`_ConsumerThread._highwaters` takes the
   larger of that answer and the high watermark of a fetch from it (always right).
4. *A short fetch wait.* faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500``,
   fixed. Apache Kafka answers a fetch as soon as one byte is there, so that wait only
   matters when a topic is idle; the embedded broker (Tansu) holds a fetch for the whole
   wait even while records arrive. Measured against it with a record every 100 ms: 415 ms
   median delivery at 1500 ms, 9 ms at 100 ms. A cutoff flag that waits for a fetch is a
   user billed for longer, so the worker asks for :data:`FETCH_MAX_WAIT_MS`.

Upstream changes that would remove 1 to 3: faust passing a copy of its active set (or
aiokafka treating an empty set as "nothing"), aiokafka's ``seek_to_committed``
resetting partitions that have no committed offset; for 3, a broker that answers
ListOffsets(latest) with the high watermark, as Apache Kafka does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, TransportT

FETCH_MAX_WAIT_MS = 100
PROBE_TIMEOUT = 30.0
"""Seconds the end-offset probe may take before recovery fails (and faust retries it)."""


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts
        return consumer

    async def getmany(self, active_partitions: set[TP] | None, timeout: float
                      ) -> Mapping[TP, list[Any]]:
        """Fetch only from a snapshot of the active partitions; nothing when there is none.

        ``None`` (a client-only app) keeps faust's meaning: every assigned partition.
        """
        if active_partitions is None:
            return await super().getmany(None, timeout)
        frozen = frozenset(active_partitions)
        if not frozen:
            return {}
        # faust annotates a set; aiokafka only tests membership, which a frozenset answers.
        return await super().getmany(cast(set[TP], frozen), timeout)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets; source partitions without one go to the start.

        As faust's: the values are the committed offsets, ``None`` where there is none
        (faust's annotation says ``int``; its ``perform_seek`` handles ``None``)."""
        return cast(Mapping[TP, int], await self.call_thread(self._seek_to_committed_or_start))

    async def _seek_to_committed_or_start(self) -> Mapping[TP, int | None]:
        consumer = self._ensure_consumer()
        committed: Mapping[TP, int | None] = await consumer.seek_to_committed()
        changelogs = self.app.tables.changelog_topics  # positioned by table recovery
        reset = [tp for tp, offset in committed.items()
                 if tp.topic not in changelogs and not offset]  # None, or 0 (not sought)
        if reset:
            await consumer.seek_to_beginning(*reset)
        return committed

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """End offsets that are never below the real end (see the module docstring, 3)."""
        listed: Mapping[TP, int] = await super()._highwaters(partitions)
        if self.consumer.in_transaction or not listed:
            return listed
        probe = self._create_client_consumer(cast(faust_aiokafka.Transport, self.transport))
        probe._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        await probe.start()
        try:
            return await fetched_highwaters(probe, listed, PROBE_TIMEOUT)
        finally:
            await probe.stop()


async def fetched_highwaters(probe: aiokafka.AIOKafkaConsumer, listed: Mapping[TP, int],
                             timeout: float) -> dict[TP, int]:
    """Each partition's end: the larger of ``listed`` (a ListOffsets answer) and the high
    watermark of a fetch from it, read with ``probe`` (a started consumer, no group)."""
    tps = {tp: aiokafka.TopicPartition(tp.topic, tp.partition) for tp in listed}
    probe.assign(list(tps.values()))
    for tp, ktp in tps.items():
        probe.seek(ktp, listed[tp])
    deadline = asyncio.get_running_loop().time() + timeout
    while any(probe.highwater(ktp) is None for ktp in tps.values()):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"no fetch answer for {list(tps)} within {timeout}s")
        await probe.getmany(*tps.values(), timeout_ms=200)
    return {tp: max(listed[tp], probe.highwater(ktp)) for tp, ktp in tps.items()}


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class WorkerApp(faust.App):
    """A faust app whose Kafka consumer fetches and seeks as the module docstring says."""

    def _new_transport(self) -> TransportT:
        transport = super()._new_transport()
        if isinstance(transport, faust_aiokafka.Transport):
            transport.Consumer = _Consumer  # type: ignore[misc]  # per instance, on purpose
        return transport
