"""Fault: the broker stops answering for 30 seconds while an application keeps emitting.

A dedicated Tansu broker (the session one is shared, and this test freezes it) is paused
with SIGSTOP: its sockets stay open and accept bytes, but nothing answers, the worst case
for a client (no connection refused to react to, only timeouts). A threaded application
emits 200 events a second through :class:`SyncEmitter` with a 500-event memory buffer, so
the buffer is full after 2.5 s and the rest of the pause goes to the spill file.

Checked: every ``emit()`` call returned within :data:`EMIT_BOUND` (the slowest is
reported), nothing was dropped, events were spilled, and after SIGCONT the topic read back
holds every event id (zero lost), in emit order per key (the partition key, ``user_id``);
duplicates are allowed (at-least-once: a batch the frozen broker took but never
acknowledged is sent again) and reported. Run alone, with the figures printed:
``pytest -m fault -k broker_pause -s``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from spendstream.embedded import EmbeddedBroker
from spendstream.producers import SyncEmitter, UsageEvent
from spendstream.streams.topics import ensure_topics
from tests.helpers import record_events, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

PAUSE = 30.0
"""Seconds the broker is frozen: three of the emitter's 10 s request timeouts."""
RATE = 200
"""Events per second the application emits, before, during and after the pause."""
BUFFER = 500
"""The emitter's memory buffer: full 2.5 s into the pause, so most of it is spilled."""
EMIT_BOUND = 0.020
"""Slowest allowed ``emit()`` call, in seconds. A call that waited on the broker would take
a request timeout (10 s), one that waited on the disk an fsync (milliseconds to seconds);
an append takes microseconds, but the caller shares the GIL (5 ms switch interval) with
the emitter's thread and two cores with the broker, so single calls of a few ms occur."""
USERS = 7


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    """A broker for this test alone: it is paused, which would stall every other test."""
    broker = EmbeddedBroker()
    broker.start()
    yield broker
    broker.stop()  # resumes it first if the test failed mid-pause


class App:
    """A threaded application emitting at a steady rate and timing every ``emit()``."""

    def __init__(self, emitter: SyncEmitter, tag: str) -> None:
        self.emitter = emitter
        self.tag = tag
        self.emitted: list[str] = []
        self.durations: list[float] = []
        self.refused = 0

    def run(self, seconds: float) -> None:
        """Emit ``RATE`` events a second for ``seconds`` (paced to a fixed schedule)."""
        start = time.monotonic()
        n = int(seconds * RATE)
        for i in range(n):
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the load's pace, not a wait for a condition
            seq = len(self.emitted)
            event = UsageEvent(event_id=f"{self.tag}-{seq:06d}", user_id=f"acct-{seq % USERS}",
                               feature="chat", model="gpt-4o", input_tokens=seq)
            t0 = time.perf_counter()
            accepted = self.emitter.emit(event)
            self.durations.append(time.perf_counter() - t0)
            self.emitted.append(event.event_id)
            self.refused += not accepted


async def _read_all(bootstrap: str, topic: str) -> list[tuple[bytes, dict[str, object]]]:
    """Every event of ``topic`` with its user id (packed records unpacked), per partition in
    offset order, up to its end offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p)
                 for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert parts, f"topic {topic} has no partitions"
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[tuple[bytes, dict[str, object]]] = []
        deadline = time.monotonic() + 60
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "timed out reading the topic back"
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for value in (orjson.loads(v) for r in records for v in record_events(r)):
                    out.append((str(value["user_id"]).encode(), value))  # packed: no key
        return out
    finally:
        await consumer.stop()


def test_a_30s_broker_freeze_loses_nothing_and_never_blocks_emit(
        own_broker: EmbeddedBroker, tmp_path: Path, uid: str) -> None:
    topic = f"usage-pause-{uid}"
    asyncio.run(ensure_topics(own_broker.bootstrap, [topic], 4))
    emitter = SyncEmitter(own_broker.url, topic, buffer_size=BUFFER,
                          spill_dir=tmp_path / "spill")
    app = App(emitter, uid)
    stats = emitter.stats
    try:
        app.run(2.0)  # healthy: delivered as it goes
        wait_until(lambda: stats.sent == len(app.emitted), 30, "delivery before the pause")

        own_broker.pause()
        try:
            app.run(PAUSE)  # the fault's duration: the app keeps going meanwhile
        finally:
            own_broker.resume()
        spilled_in_pause = stats.spilled
        assert spilled_in_pause > 0, "the memory buffer never overflowed to the spill file"

        app.run(5.0)  # still emitting while the backlog drains: new events queue behind it
        wait_until(lambda: stats.buffered == 0, 120, "the backlog to drain after the pause")
    finally:
        delivered = emitter.close(timeout=30)
    assert delivered, f"events left undelivered at close: {stats}"

    records = asyncio.run(_read_all(own_broker.bootstrap, topic))
    ids = [str(value["event_id"]) for _, value in records]
    counts = Counter(ids)
    lost = set(app.emitted) - set(counts)
    duplicates = sum(n - 1 for n in counts.values())
    # Per key, the first copy of each event must come in emit order.
    per_key: dict[bytes, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for key, value in records:
        event_id = str(value["event_id"])
        if event_id not in seen:
            seen.add(event_id)
            per_key[key].append(int(event_id.rsplit("-", 1)[1]))
    out_of_order = {key.decode(): seqs for key, seqs in per_key.items() if seqs != sorted(seqs)}

    d = sorted(app.durations)
    slowest = d[-1]
    print(f"\nbroker paused {PAUSE:.0f}s at {RATE}/s, buffer {BUFFER}: emitted {len(app.emitted)}, "
          f"spilled {stats.spilled} ({spilled_in_pause} during the pause), replayed "
          f"{stats.replayed}, dropped {stats.dropped}, lost {len(lost)}, duplicates "
          f"{duplicates}, events read {len(records)}; emit() p50 "
          f"{statistics.median(d) * 1e6:.0f} µs, p99 {d[int(len(d) * 0.99)] * 1e6:.0f} µs, "
          f"p99.9 {d[int(len(d) * 0.999)] * 1e6:.0f} µs, max {slowest * 1e3:.2f} ms")

    assert app.refused == 0 and stats.dropped == 0
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:5]}"
    assert set(counts) == set(app.emitted)
    assert not out_of_order, f"per-key order broken for {sorted(out_of_order)}"
    assert stats.replayed >= stats.spilled
    assert slowest < EMIT_BOUND, f"slowest emit() took {slowest * 1e3:.1f} ms"
