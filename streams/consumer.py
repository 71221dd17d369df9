"""The worker's faust app class: faust's own, with its consumer and table manager bent.

Everything faust is bent for lives here, each piece pinned by a test of the faust or
aiokafka behaviour it relies on (``tests/integration/test_consumer_pins.py``; the broker's
in ``tests/integration/test_broker_conformance.py``).

**Invariant.** A source offset is committed (to Kafka by faust, or to the changelog with
the state) only after every event before it was counted or dead-lettered; a restart
resumes from the first uncounted event, whatever the broker answers for end offsets.
The worker's loops mark a batch counted only once they are done with it, and faust's
commit flushes the producer (the changelog) before it commits what they marked (5); a
loop never lets one event fail a batch (``streams/app.py``). What faust does not give,
this module adds:

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
5. *Whole fetches, not records, for the worker's own topics.* faust delivers a fetch one
   record at a time: a ``Message`` and an ``Event`` each, a queue put and get, a sensor
   call and an ack, in two tasks per record. That was two thirds of the worker's CPU
   (issue 11), and ``take_events`` then waited its window out after every batch. The
   usage and rollup topics are instead diverted where faust's fetch returns
   (:meth:`_Consumer._getmany`) into a :class:`BatchFeed` each, and the worker's loops
   take a whole fetch (or as many as are waiting) at once. faust keeps everything else:
   membership, table recovery and changelogs, timers, the producer, and the commit, which
   still flushes the producer (changelog, rollup messages, dead letters) before it
   commits. A feed reports what was counted (:meth:`BatchFeed.finished`); faust commits
   exactly that through :meth:`_Consumer._new_offset`. Before partitions are revoked and
   before the consumer stops, queued records are dropped (they are not committed, so they
   are fetched again) and the batch in hand is finished, then faust commits
   (:meth:`_Consumer.wait_empty`).
6. *A restart after a crash does not wait for its dead self.* A worker killed without
   leaving its group stays a member until its session times out; on the embedded broker a
   new member's join then completed with the dead one still in it, its sync waited for
   that member's assignment, and the worker took its partitions back only about 18 s
   later (measured: 18.1 s without, 5.0 s with what follows, the 5 s being the broker's
   own join delay, half the session timeout). The worker writes its member id to its
   state directory after each assignment (:class:`PreviousMember`) and removes it when it
   stops cleanly (aiokafka then leaves the group); on start, the consumer thread first
   sends LeaveGroup for a member id it finds there, as the dead process would have on a
   clean stop, if the group is stable (:func:`remove_dead_member`: mid-rebalance that
   wedged the embedded broker's group when the dead member was its elected leader). A
   file left by a process that is still running is never used (two workers started on
   one state directory do not expel each other), and static membership
   (``SPENDSTREAM_GROUP_INSTANCE_ID``) needs none of it. Both live in
   ``streams/membership.py``.
7. *No second of sleep at start.* faust's ``TableManager.on_start`` sleeps 1 s before it
   registers the tables' changelogs, so that tables declared while the app starts are
   included; the worker declares all of its tables before it starts (``build_app``), so
   :class:`TableManager` goes straight on, and every start and restart is a second
   shorter.

Upstream changes that would remove them: 1, faust passing a copy of its active set (or
aiokafka treating an empty set as "nothing"); 2, aiokafka's ``seek_to_committed``
resetting partitions that have no committed offset; 3, a broker that answers
ListOffsets(latest) with the high watermark, as Apache Kafka does; 4, a faust setting for
``fetch_max_wait_ms``; 5, an agent option that hands a stream whole fetches and takes one
ack per partition and offset range (``Stream.take_events`` still builds and acks every
record's event); 6, a broker that does not join a new member with a dead one (static
membership avoids it too); 7, a faust setting to skip the sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from time import monotonic
from typing import Any, cast

import aiokafka
import faust
from faust.tables.manager import TableManager as FaustTableManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, TransportT

from spendstream.streams.feed import BatchFeed
from spendstream.streams.membership import PreviousMember, remove_dead_member

log = logging.getLogger("spendstream.worker")

FETCH_MAX_WAIT_MS = 100
PROBE_TIMEOUT = 30.0
"""Seconds the end-offset probe may take before recovery fails (and faust retries it)."""


def _previous_member(app: Any) -> PreviousMember | None:
    """The app's :attr:`WorkerApp.previous_member` (``None`` for any other faust app)."""
    return cast(PreviousMember | None, getattr(app, "previous_member", None))


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def on_start(self) -> None:
        await super().on_start()
        previous = _previous_member(self.app)
        if previous is None:
            return
        group = self.app.conf.id
        stale = previous.stale(group)
        if stale is None:
            return
        try:
            done = await asyncio.wait_for(
                remove_dead_member(self._ensure_consumer()._client, group, stale), 10.0)
        except Exception as e:  # only slower: the broker times the member out instead
            log.warning("could not remove the previous member %s from group %s (%r); "
                        "the group waits for its session to time out", stale, group, e)
        else:
            log.warning("the last worker on this state directory did not stop cleanly "
                        "(killed?); its member %s of group %s: %s", stale, group, done)

    async def on_thread_stop(self) -> None:
        await super().on_thread_stop()  # the consumer has left its group
        previous = _previous_member(self.app)
        if previous is not None:
            previous.clear()

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
    @property
    def feeds(self) -> dict[str, BatchFeed]:
        """Topic name to its feed (:attr:`WorkerApp.feeds`): records of these topics never
        reach faust's streams."""
        return cast(dict[str, BatchFeed], getattr(self.app, "feeds", {}))

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float
                       ) -> Mapping[TP, list[Any]]:
        """faust's fetch, with the records of fed topics moved to their feeds."""
        records = await super()._getmany(active_partitions, timeout)
        feeds = self.feeds
        if not feeds or not records or not any(tp.topic in feeds for tp in records):
            return records
        # aiokafka returns only records at each partition's current position, so what
        # comes back is the next to count, whatever rebalanced meanwhile. A record is
        # dropped only where faust drops its own and a seek to the committed offset
        # follows: the flow stopped (a rebalance or a stop; faust's getmany then seeks at
        # once) or its partition paused (recovery, which ends with that seek).
        current = self.flow_active and not self.should_stop
        rest: dict[TP, list[Any]] = {}
        for tp, recs in records.items():
            feed = feeds.get(tp.topic)
            if feed is None:
                rest[tp] = recs
            elif current and recs and (active_partitions is None or tp in active_partitions):
                await feed.put(tp, recs)
        return rest

    def note_progress(self, tps: Iterable[TP]) -> None:
        """Tell faust's monitor these partitions are moving (its livelock check)."""
        now = monotonic()
        inbound = self.app.monitor.stream_inbound_time
        for tp in tps:
            inbound[tp] = now

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        yield from super()._filter_tps_with_pending_acks(topics)
        for feed in self.feeds.values():
            for tp in feed.counted:
                if topics is None or tp in topics or tp.topic in topics:
                    yield tp

    def _new_offset(self, tp: TP) -> int | None:
        feed = self.feeds.get(tp.topic)
        if feed is None:
            return super()._new_offset(tp)
        return feed.counted.get(tp)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        await super().on_partitions_assigned(assigned, generation_id)
        previous = _previous_member(self.app)
        if previous is not None:
            member_id = self._thread._ensure_consumer()._coordinator.member_id
            with contextlib.suppress(OSError):  # only a slower restart
                previous.save(self.app.conf.id, member_id)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)  # waits (wait_empty) and commits
        for feed in self.feeds.values():
            feed.forget(revoked)

    async def wait_empty(self) -> None:
        """Finish the feeds' batches in hand and drop what is queued, then faust's own wait,
        which commits: before a rebalance (faust has stopped the flow) and before a stop."""
        for feed in self.feeds.values():
            await feed.settle()
        await super().wait_empty()


class TableManager(FaustTableManager):
    """faust's table manager without the 1 s sleep at start (module docstring, 7)."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class WorkerApp(faust.App):
    """A faust app whose Kafka consumer fetches and seeks as the module docstring says."""

    feeds: dict[str, BatchFeed]
    """The topics whose records go to a :class:`BatchFeed` instead of faust's streams."""
    previous_member: PreviousMember | None = None
    """Where the worker keeps its member id for the next start (module docstring, 6);
    ``None`` with static membership, which needs none of it."""

    def feed(self, topic: faust.types.TopicT, limit: int) -> BatchFeed:
        """Subscribe to ``topic`` and queue its fetched records in a new feed."""
        self.topics.add(topic)
        feeds = self.__dict__.setdefault("feeds", {})
        (name,) = topic.topics
        feeds[name] = feed = BatchFeed(name, limit)
        return feed

    def _new_transport(self) -> TransportT:
        transport = super()._new_transport()
        if isinstance(transport, faust_aiokafka.Transport):
            transport.Consumer = _Consumer  # type: ignore[misc]  # per instance, on purpose
        return transport
