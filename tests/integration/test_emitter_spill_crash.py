"""A process killed (SIGKILL) while Kafka was unreachable: its spill file is replayed, in
order, by the next emitter started with the same spill directory."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from spendstream.embedded import EmbeddedBroker, free_port
from spendstream.producers import Emitter
from spendstream.streams.topics import ensure_topics
from tests.helpers import record_events

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from spendstream.producers import SyncEmitter, UsageEvent

    address, topic, spill_dir = sys.argv[1:4]
    emitter = SyncEmitter(address, topic, buffer_size=10, spill_dir=spill_dir)
    size = 16
    for i in range(200):
        event = UsageEvent(event_id=f"crash-{i:04d}", user_id=f"acct-{i % 3}",
                           feature="chat", model="gpt-4o", input_tokens=i)
        assert emitter.emit(event)
        if i >= 10:  # the first 10 fill the memory buffer
            size += 12 + len(event.key) + len(event.to_json())
    # The sender writes the spill file out on each failed connection attempt.
    deadline = time.monotonic() + 30
    while os.path.getsize(emitter.spill_path) < size and time.monotonic() < deadline:
        time.sleep(0.05)
    print(emitter.stats.spilled, os.path.getsize(emitter.spill_path), size, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


async def _read(bootstrap: str, topic: str, n: int) -> list[str]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    ids: list[str] = []
    try:
        async with asyncio.timeout(30):
            while len(ids) < n:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    ids += [orjson.loads(v)["event_id"] for r in records
                            for v in record_events(r)]
    finally:
        await consumer.stop()
    return ids


async def test_a_killed_process_spill_file_is_replayed_in_order(
        broker: EmbeddedBroker, uid: str, tmp_path: Path) -> None:
    topic, spill_dir = f"crash-{uid}", tmp_path / "spill"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, f"127.0.0.1:{free_port()}", topic, str(spill_dir)],
        capture_output=True, text=True, timeout=60)
    assert child.returncode == -9, child.stderr
    spilled, on_disk, expected = map(int, child.stdout.split())
    assert spilled == 190 and on_disk == expected, child.stdout

    await ensure_topics(broker.bootstrap, [topic], 1)
    emitter = Emitter(broker.bootstrap, topic, spill_dir=spill_dir)
    assert emitter.spill_path == spill_dir / f"{topic}.spill"  # the dead process's slot
    assert emitter.stats.buffered == 190
    await emitter.start()
    assert await emitter.flush(30)
    await emitter.stop()
    # The 10 events in the killed process's memory are gone; the 190 spilled ones arrive,
    # in emit order (one partition: the topic's order is the send order).
    ids = await _read(broker.bootstrap, topic, 190)
    assert ids == [f"crash-{i:04d}" for i in range(10, 200)]
    assert emitter.stats.replayed == 190 and emitter.stats.dropped == 0
    assert not (spill_dir / f"{topic}.spill").exists()  # drained, stopped: nothing to keep
