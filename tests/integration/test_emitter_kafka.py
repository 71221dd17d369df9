"""The emitter against a real Kafka-protocol broker (Tansu): every event arrives, intact,
on its user's partition, packed several to a record or (``pack=False``) one per record.

Each test creates its own topic with two partitions or more first, because Tansu would
otherwise auto-create it with a partition count of its own choosing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from spendstream.embedded import EmbeddedBroker
from spendstream.producers import Emitter, SyncEmitter, UsageEvent, decode_event
from spendstream.producers._packing import partition_of
from tests.helpers import record_events, wait_until_async

pytestmark = pytest.mark.integration


def make_events(n: int, tag: str, users: int = 7) -> list[UsageEvent]:
    """``n`` distinct events over ``users`` users, with every optional field exercised."""
    return [
        UsageEvent(user_id=f"acct-{i % users}", feature=f"feat-{tag}", model="gpt-4o",
                   provider="openai", input_tokens=i, output_tokens=2 * i,
                   cached_input_tokens=i // 2, finish_reason="stop",
                   cost_usd=Decimal(i) / 10_000 if i % 2 else None)
        for i in range(n)
    ]


async def create_topic(bootstrap: str, topic: str, partitions: int = 2) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                            replication_factor=1)])
    finally:
        await admin.close()


async def consume(bootstrap: str, topic: str, want: int,
                  timeout: float = 30.0) -> tuple[list[ConsumerRecord], int]:
    """Read until ``want`` events arrived; also return how many records the topic holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        while (sum(len(record_events(r)) for r in records) < want
               and time.monotonic() < deadline):
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        # The fetch high watermarks, not end_offsets(): Tansu answers ListOffsets(latest)
        # with the last batch's base offset, which under-counts.
        return records, sum(consumer.highwater(tp) or 0 for tp in parts)
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()  # no public way to ask for one topic
    raise AssertionError(f"topic {topic} has no partitions")


def assert_delivered_exactly(records: list[ConsumerRecord], total: int,
                             sent: list[UsageEvent], partitions: int = 2) -> None:
    """Exact counts, equal values, each event on its user's partition (a lone event keyed
    by its user), and one user's events in emission order."""
    assert len(records) == total
    by_id = {e.event_id: e for e in sent}
    order_of_user: dict[str, list[str]] = defaultdict(list)
    received = 0
    for record in records:
        for value in record_events(record):
            event = decode_event(value)
            received += 1
            assert event == by_id[event.event_id]
            assert record.key in (None, event.user_id.encode())
            assert record.partition == partition_of(event.key, partitions)
            order_of_user[event.user_id].append(event.event_id)
    assert received == len(sent)
    for user, ids in order_of_user.items():
        assert ids == [e.event_id for e in sent if e.user_id == user]
    assert order_of_user.keys() == {e.user_id for e in sent}


async def test_emitter_delivers_every_event_once_with_key_and_value(
        broker: EmbeddedBroker, uid: str) -> None:
    topic = f"usage-{uid}"
    await create_topic(broker.bootstrap, topic)
    events = make_events(600, uid)
    async with Emitter(broker.bootstrap, topic) as emitter:
        assert all([emitter.emit(e) for e in events])
        assert await emitter.flush(30)
        stats = emitter.stats
        assert (stats.emitted, stats.sent, stats.dropped, stats.errors, stats.buffered) == (
            600, 600, 0, 0, 0)
    records, total = await consume(broker.bootstrap, topic, len(events))
    assert_delivered_exactly(records, total, events)
    assert {r.partition for r in records} == {0, 1}


async def test_packed_records_hold_each_users_events_on_its_partition_in_order(
        broker: EmbeddedBroker, uid: str) -> None:
    topic = f"usage-packed-{uid}"
    await create_topic(broker.bootstrap, topic, partitions=5)
    events = make_events(200, uid, users=50)
    async with Emitter(broker.bootstrap, topic) as emitter:
        assert all([emitter.emit(e) for e in events])  # one round: the sender has not run
        assert await emitter.flush(30)
        assert (emitter.stats.sent, emitter.stats.dropped, emitter.stats.errors) == (200, 0, 0)
    records, total = await consume(broker.bootstrap, topic, len(events))
    assert_delivered_exactly(records, total, events, partitions=5)
    assert len(records) == 5  # one record per partition: 200 events fit in 256 KiB


async def test_without_packing_each_event_is_its_own_keyed_record(
        broker: EmbeddedBroker, uid: str) -> None:
    topic = f"usage-unpacked-{uid}"
    await create_topic(broker.bootstrap, topic, partitions=3)
    events = make_events(200, uid, users=50)
    async with Emitter(broker.bootstrap, topic, pack=False) as emitter:
        assert all([emitter.emit(e) for e in events])
        assert await emitter.flush(30)
        assert emitter.stats.sent == 200
    records, total = await consume(broker.bootstrap, topic, len(events))
    assert_delivered_exactly(records, total, events, partitions=3)
    assert len(records) == 200
    assert all(r.key == decode_event(r.value).key and not r.headers for r in records)


def test_sync_emitter_delivers_events_from_many_threads(broker: EmbeddedBroker, uid: str) -> None:
    topic = f"usage-sync-{uid}"
    asyncio.run(create_topic(broker.bootstrap, topic))
    # One thread per user, so each user's emission order is well defined.
    per_thread = {f"acct-{t}": [UsageEvent(user_id=f"acct-{t}", feature="chat", model="m",
                                           input_tokens=i) for i in range(150)]
                  for t in range(4)}
    with SyncEmitter(broker.bootstrap, topic) as emitter:
        threads = [threading.Thread(target=lambda evs=evs: [emitter.emit(e) for e in evs])
                   for evs in per_thread.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert emitter.flush(30)
        assert (emitter.stats.emitted, emitter.stats.sent, emitter.stats.dropped) == (600, 600, 0)
    assert emitter.close() is True  # idempotent, reports the first close's answer
    events = [e for evs in per_thread.values() for e in evs]
    records, total = asyncio.run(consume(broker.bootstrap, topic, len(events)))
    assert_delivered_exactly(records, total, events)


async def test_packing_keeps_within_the_producers_max_request_size(
        broker: EmbeddedBroker, uid: str) -> None:
    topic = f"usage-small-{uid}"
    await create_topic(broker.bootstrap, topic)
    events = make_events(100, uid)
    async with Emitter(broker.bootstrap, topic, max_request_size=4096) as emitter:
        assert all([emitter.emit(e) for e in events])
        assert await emitter.flush(30)
        assert (emitter.stats.sent, emitter.stats.dropped, emitter.stats.errors) == (100, 0, 0)
    records, total = await consume(broker.bootstrap, topic, len(events))
    assert_delivered_exactly(records, total, events)
    assert all(len(r.value) <= 4096 - 1024 for r in records)
    assert any(r.key is None for r in records)  # still packed, in smaller records


async def test_a_packed_record_the_producer_refuses_goes_event_by_event(
        broker: EmbeddedBroker, uid: str) -> None:
    topic = f"usage-refused-{uid}"
    await create_topic(broker.bootstrap, topic)
    events = make_events(100, uid)
    emitter = Emitter(broker.bootstrap, topic, max_request_size=4096)
    emitter._sender.pack_max_bytes = 64 * 1024  # packs too big for the producer: it raises at send
    async with emitter:
        assert all([emitter.emit(e) for e in events])
        assert await emitter.flush(30)
        assert (emitter.stats.sent, emitter.stats.dropped, emitter.stats.errors) == (100, 0, 0)
    records, total = await consume(broker.bootstrap, topic, len(events))
    assert_delivered_exactly(records, total, events)  # in order: split before sending on
    assert all(r.key is not None for r in records)


async def test_events_emitted_while_the_broker_is_paused_arrive_after_resume(uid: str) -> None:
    # Its own broker: pausing the session one would stall every other test.
    paused = EmbeddedBroker()
    paused.start()
    try:
        topic = f"usage-pause-{uid}"
        await create_topic(paused.bootstrap, topic)
        before, during = make_events(20, "before"), make_events(100, "during")
        # A short request timeout so the pause outlasts it and the retry path runs.
        emitter = Emitter(paused.bootstrap, topic, request_timeout_ms=1_000)
        await emitter.start()
        assert all([emitter.emit(e) for e in before])
        assert await emitter.flush(15)
        paused.pause()
        try:
            assert all([emitter.emit(e) for e in during])
            await wait_until_async(lambda: emitter.stats.errors >= 1, 20, "a failed send attempt")
            assert emitter.stats.buffered > 0
        finally:
            paused.resume()
        assert await emitter.flush(60)
        assert await emitter.stop()
        sent = before + during
        assert (emitter.stats.emitted, emitter.stats.sent, emitter.stats.dropped) == (120, 120, 0)
        records, _ = await consume(paused.bootstrap, topic, len(sent))
        # At-least-once: a retry may duplicate an event (the worker dedups by event_id),
        # but none may be missing.
        received = {decode_event(v).event_id for r in records for v in record_events(r)}
        assert received == {e.event_id for e in sent}
    finally:
        paused.stop()
