"""Alerts one run did not deliver, handed to the next run through a Kafka topic.

At a clean stop the dispatcher keeps what it could not deliver (Slack down, a burst still
queued); :func:`release` writes each to the app's handover topic, keyed by its transition
(:attr:`Alert.transition`). At start, :func:`take` reads the topic, returns the alerts
whose latest record is a release, and writes a tombstone for each: they are this run's now
(released again if it too stops before delivering them). So each transition is still one
message, across restarts; a crash (SIGKILL) hands nothing over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from spendstream.contract.alert import Alert

log = logging.getLogger("spendstream.alerts")

READ_TIMEOUT = 10.0


async def release(bootstrap: str, topic: str, alerts: Iterable[Alert], **client: Any) -> int:
    """Write ``alerts`` to the handover topic; the number written."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **client)
    await producer.start()
    n = 0
    try:
        for alert in alerts:
            await producer.send(topic, orjson.dumps(alert.to_dict()),
                                key=alert.transition.encode())
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


async def take(bootstrap: str, topic: str, **client: Any) -> list[Alert]:
    """The alerts released by earlier runs and not taken since, oldest first; each is
    marked taken (a tombstone) before this returns."""
    latest: dict[bytes, bytes | None] = {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, **client)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()  # a topic made moments ago
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + READ_TIMEOUT
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    if r.key is not None:
                        latest[r.key] = r.value
            if not batch and await _at_end(consumer, ends):
                break
    finally:
        await consumer.stop()
    alerts = []
    for key, value in latest.items():
        if value is None:
            continue
        try:
            alerts.append(Alert.from_dict(orjson.loads(value)))
        except (ValueError, KeyError, TypeError) as e:
            log.error("handover record %r is not an alert (%s): skipped", key, e)
    if latest:
        await _tombstones(bootstrap, topic, [k for k, v in latest.items() if v is not None],
                          **client)
    alerts.sort(key=lambda a: a.at)
    return alerts


async def _at_end(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Every partition read up to its end offset (as the broker reported it at the start)."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def _tombstones(bootstrap: str, topic: str, keys: list[bytes], **client: Any) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **client)
    await producer.start()
    try:
        for key in keys:
            await producer.send(topic, None, key=key)
        await producer.flush()
    finally:
        await producer.stop()
