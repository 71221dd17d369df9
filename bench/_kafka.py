"""Kafka side of the benchmark: bulk publishing and the plain aiokafka consumer ceiling."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from spendstream.producers._packing import pack
from spendstream.streams.topics import ensure_topics

CHUNK = 20_000
"""Events in flight before waiting for their acknowledgements (bounds the bench's memory)."""
ROUND = 500
"""Events the SDK emitter takes per send round (its ``_MAX_BATCH``): what one pack holds."""
STALL = 120.0
"""Seconds without a new record before the ceiling measurement gives up."""


@dataclass(frozen=True, slots=True)
class Rate:
    """``events`` handled in ``seconds`` (first to last)."""

    events: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create the usage topic before anything touches it: Tansu would auto-create it with
    its own partition count."""
    counts = await ensure_topics(bootstrap, [topic], partitions)
    if counts.get(topic) != partitions:
        raise SystemExit(f"topic {topic} has {counts.get(topic)} partitions, not {partitions}")


def producer(bootstrap: str, linger_ms: int = 20) -> AIOKafkaProducer:
    """A producer tuned for bulk (big batches) or, with a small linger, for latency."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms,
                            max_batch_size=512 * 1024, acks=1)


async def publish(bootstrap: str, topic: str, messages: Iterator[tuple[bytes, bytes]],
                  progress: Callable[[int], None] | None = None, packed: bool = True) -> Rate:
    """Send every (key, value) as fast as the broker takes them; wait for all acks.

    ``packed`` sends what the SDK emitter sends: rounds of :data:`ROUND` events, packed into
    one record per partition; otherwise one record per event (the classic form that other
    producers may use)."""
    p = producer(bootstrap)
    await p.start()
    sent = 0
    started = time.perf_counter()
    try:
        partitions = len(await p.partitions_for(topic))
        pending: list[asyncio.Future[object]] = []
        chunk: list[tuple[bytes, bytes]] = []
        acked = 0
        for message in messages:
            chunk.append(message)
            if len(chunk) < (ROUND if packed else 1):
                continue
            pending.extend(await send(p, topic, chunk, partitions, packed))
            sent += len(chunk)
            chunk = []
            if sent - acked >= CHUNK:
                await asyncio.gather(*pending)
                pending.clear()
                acked = sent
                if progress is not None:
                    progress(sent)
        pending.extend(await send(p, topic, chunk, partitions, packed))
        sent += len(chunk)
        await asyncio.gather(*pending)
    finally:
        await p.stop()
    return Rate(sent, time.perf_counter() - started)


async def send(p: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]],
               partitions: int, packed: bool) -> list[asyncio.Future[object]]:
    """Hand one round of messages to the producer, packed as the emitter packs them."""
    if not packed:
        return [await p.send(topic, value, key=key) for key, value in messages]
    return [await p.send(topic, r.value, key=r.key, partition=r.partition,
                         headers=list(r.headers)) for r in pack(messages, partitions)]


def events_in(value: bytes) -> int:
    """How many events a record carries (a packed record is a JSON array)."""
    decoded = orjson.loads(value)
    return len(decoded) if isinstance(decoded, list) else 1


class BackgroundPublish(threading.Thread):
    """:func:`publish` in a thread of its own, so the worker is watched while events go out."""

    def __init__(self, bootstrap: str, topic: str, messages: Iterator[tuple[bytes, bytes]],
                 progress: Callable[[int], None] | None = None, packed: bool = True) -> None:
        super().__init__(name="publisher", daemon=True)
        self.args = (bootstrap, topic, messages, progress, packed)
        self.rate: Rate | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """Publish everything; keep the rate or the error."""
        try:
            self.rate = asyncio.run(publish(*self.args))
        except BaseException as e:  # re-raised in the main thread by check()
            self.error = e

    def check(self) -> None:
        """Raise in the caller's thread when publishing failed."""
        if self.error is not None:
            raise RuntimeError(f"publishing failed: {self.error!r}") from self.error

    def result(self) -> Rate:
        """Wait for the last acknowledgement; the publish rate."""
        self.join()
        self.check()
        assert self.rate is not None
        return self.rate


async def aiokafka_ceiling(bootstrap: str, topic: str, n: int, group: str) -> Rate:
    """A plain consumer-group reader (``getmany``, ``orjson.loads`` of each value): the
    fastest a Python consumer gets through the topic's ``n`` events on this machine."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=True)
    await consumer.start()
    count, first, last_progress = 0, 0.0, time.monotonic()
    try:
        while count < n:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            if not batches:
                if time.monotonic() - last_progress > STALL:
                    raise SystemExit(f"aiokafka ceiling: stuck at {count} of {n} records")
                continue
            if not count:
                first = time.perf_counter()
            for records in batches.values():
                for record in records:
                    count += events_in(record.value)  # type: ignore[arg-type]
            last_progress = time.monotonic()
        return Rate(count, time.perf_counter() - first)
    finally:
        await consumer.stop()


async def wait_group(bootstrap: str, group: str, members: int, timeout: float = 120.0) -> None:
    """Wait until consumer group ``group`` is ``Stable`` with ``members`` members (every
    worker has joined and the partitions are spread), so no rebalance lands mid-measure."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            for response in await admin.describe_consumer_groups([group]):
                # groups: (error_code, group, state, protocol_type, protocol, members)
                for g in response.groups:
                    if g[1] == group and g[2] == "Stable" and len(g[5]) == members:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"group {group} did not reach {members} stable members "
                                   f"in {timeout:.0f}s")
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
