"""The faust and aiokafka behaviours ``streams/consumer.py`` works around, pinned.

When one of these fails after an upgrade, the work-around may be obsolete (or wrong):
read the module docstring of ``streams/consumer.py`` before changing either.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from spendstream.alerts import LogNotifier
from spendstream.domain.budgets import Budgets
from spendstream.settings import Settings
from spendstream.streams.app import build_app
from spendstream.streams.consumer import _ConsumerThread
from spendstream.streams.topics import ensure_topics
from tests.integration.test_broker_conformance import _produce

pytestmark = pytest.mark.integration


def _source(fn: object) -> str:
    return inspect.getsource(fn)  # type: ignore[arg-type]


def test_faust_hands_its_live_active_set_to_the_fetch_and_empties_it_in_place():
    # _wait_next_records passes the object _get_active_partitions returns ...
    wait = _source(faust_consumer.Consumer._wait_next_records)
    assert "active_partitions = self._get_active_partitions()" in wait
    assert "self._getmany(\n                    active_partitions=active_partitions" in wait
    # ... the delegate hands it to the thread, and the thread to aiokafka ...
    assert "self._thread.getmany(active_partitions" in _source(
        faust_consumer.ThreadDelegateConsumer._getmany)
    assert "fetched_records(\n                    active_partitions" in _source(
        faust_aiokafka.AIOKafkaConsumerThread._fetch_records)
    # ... and pausing (what recovery does) clears and refills that same object.
    c = SimpleNamespace(_active_partitions={TP("t", 0)}, _paused_partitions={TP("t", 0)})
    live = c._active_partitions
    faust_consumer.Consumer._set_active_tps(c, {TP("t", 0)})
    assert c._active_partitions is live and not live


def test_faust_seeks_through_seek_to_committed_and_reads_ends_through_highwaters():
    assert "await self.seek_to_committed()" in _source(faust_consumer.Consumer.perform_seek)
    assert "self._thread.seek_to_committed()" in _source(
        faust_consumer.ThreadDelegateConsumer.seek_to_committed)
    assert "self._highwaters" in _source(faust_aiokafka.AIOKafkaConsumerThread.highwaters)
    recovery = Path(inspect.getfile(faust_consumer)).parent.parent / "tables" / "recovery.py"
    assert "await consumer.highwaters(*tps)" in recovery.read_text()
    for name in ("getmany", "seek_to_committed", "_highwaters", "_create_worker_consumer",
                 "_create_client_consumer", "_ensure_consumer", "call_thread"):
        assert callable(getattr(faust_aiokafka.AIOKafkaConsumerThread, name)), name


async def test_the_worker_thread_fetches_nothing_for_an_empty_active_set(tmp_path):
    settings = Settings(_env_file=None, state_dir=tmp_path)  # type: ignore[call-arg]
    app = build_app(settings, Budgets(), LogNotifier())
    thread = app.consumer._new_consumer_thread()
    assert isinstance(thread, _ConsumerThread)
    assert await thread.getmany(set(), 1.0) == {}  # never reaches the (unstarted) consumer
    assert app.conf.consumer_auto_offset_reset == "earliest"  # what "the start" means


async def _buffered(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
    for _ in range(200):
        if all(tp in consumer._fetcher._records for tp in tps):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"aiokafka never buffered {tps}")


async def test_aiokafka_reads_an_empty_partition_set_as_every_partition(broker, uid):
    topic = f"p{uid}"
    await ensure_topics(broker.bootstrap, [topic], 2)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    for tp in tps:
        await _produce(broker.bootstrap, topic, [3], partition=tp.partition)
    c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                         auto_offset_reset="earliest")
    await c.start()
    try:
        c.assign(tps)
        await _buffered(c, tps)
        drained = await c._fetcher.fetched_records(set(), timeout=1)
        assert set(drained) == set(tps)  # "no filter": what drained the usage partitions
        c.seek(tps[0], 0)
        c.seek(tps[1], 0)
        await _buffered(c, tps)
        only = await c._fetcher.fetched_records(frozenset({tps[0]}), timeout=1)
        assert set(only) == {tps[0]}
    finally:
        await c.stop()


async def test_seek_to_committed_leaves_uncommitted_partitions_and_ours_resets_them(broker,
                                                                                     uid):
    topic, changelog = f"s{uid}", f"s{uid}-changelog"
    await ensure_topics(broker.bootstrap, [topic, changelog], 1)
    await _produce(broker.bootstrap, topic, [5])
    await _produce(broker.bootstrap, changelog, [5])
    tp, ctp = TopicPartition(topic, 0), TopicPartition(changelog, 0)
    c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=f"g{uid}",
                         enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    try:
        c.assign([tp, ctp])
        for t in (tp, ctp):
            while await c.position(t) < 5:
                await c.getmany(t, timeout_ms=500)
        assert await c.seek_to_committed() == {tp: None, ctp: None}
        assert await c.position(tp) == 5  # aiokafka: no committed offset, no seek
        stand_in = SimpleNamespace(_ensure_consumer=lambda: c, app=SimpleNamespace(
            tables=SimpleNamespace(changelog_topics={changelog})))
        committed = await _ConsumerThread._seek_to_committed_or_start(stand_in)
        assert committed == {tp: None, ctp: None}
        assert await c.position(tp) == 0  # back to the start: dedup absorbs the replay
        assert await c.position(ctp) == 5  # changelogs are positioned by table recovery
    finally:
        await c.stop()


def test_faust_commits_through_the_hooks_the_batch_feeds_fill_and_waits_where_they_settle():
    """``streams/consumer.py``, 5: the feeds' counted offsets reach faust's commit only
    through ``_filter_tps_with_pending_acks`` and ``_new_offset``, the fetch through
    ``_getmany``, and a rebalance or a stop finishes the batch in hand through
    ``wait_empty``. If faust moves any of these, the feed must move with it."""
    consumer = faust_consumer.Consumer
    assert "self._getmany(" in _source(consumer._wait_next_records)
    assert "await self._wait_next_records(timeout)" in _source(consumer.getmany)
    assert "self._filter_tps_with_pending_acks(topics)" in _source(consumer.force_commit)
    assert "self._filter_committable_offsets(tps)" in _source(consumer._commit_tps)
    assert "offset = self._new_offset(tp)" in _source(consumer._filter_committable_offsets)
    assert "await self.app.producer.flush()" in _source(consumer._commit_offsets)  # first
    assert "await T(self.commit_and_end_transactions)()" in _source(consumer.wait_empty)
    app_source = Path(inspect.getfile(faust_consumer)).parent.parent / "app" / "base.py"
    text = app_source.read_text()
    # revocation: flow stopped before the wait (no put after the feeds settle), the wait
    # before the assignment's seek; a stop waits too
    revoked = text[text.index("async def _on_partitions_revoked"):]
    revoked = revoked[:revoked.index("async def _stop_fetcher")]
    assert revoked.index("consumer.stop_flow") < revoked.index("_consumer_wait_empty")
    assert "await consumer.wait_empty()" in text
    stop = text[text.index("async def _stop_consumer"):text.index("def on_rebalance_start")]
    assert "await self._consumer_wait_empty(consumer, self.log)" in stop
    # the monitor's livelock check reads the inbound time the feeds' loops update
    assert "stream_inbound_time" in _source(faust_aiokafka.AIOKafkaConsumerThread
                                           .verify_event_path)


def test_the_worker_app_routes_its_topics_to_feeds(tmp_path):
    settings = Settings(_env_file=None, state_dir=tmp_path)  # type: ignore[call-arg]
    app = build_app(settings, Budgets(), LogNotifier())
    assert set(app.feeds) == {settings.topic, settings.rollup_topic}
    assert not list(app.agents)  # nothing of theirs reaches a faust stream
    names = {t for topic in app.topics for t in topic.topics}
    assert {settings.topic, settings.rollup_topic} <= names  # still subscribed


def test_faust_sleeps_a_second_before_registering_tables_and_the_worker_does_not(tmp_path):
    """``streams/consumer.py``, 7: the worker's table manager skips faust's sleep and does
    the rest of faust's ``on_start`` as it is."""
    from faust.tables.manager import TableManager as FaustTableManager

    from spendstream.streams.consumer import TableManager

    faust_start = _source(FaustTableManager.on_start)
    assert "await self.sleep(1.0)" in faust_start
    ours = _source(TableManager.on_start)
    for step in ("await self._update_channels()", "await self.recovery.start()"):
        assert step in faust_start and step in ours
    assert "sleep" not in ours
    settings = Settings(_env_file=None, state_dir=tmp_path)  # type: ignore[call-arg]
    assert isinstance(build_app(settings, Budgets(), LogNotifier()).tables, TableManager)
