"""Spill to disk: a full buffer spills instead of dropping, and replays in emit order.

No broker: a fake producer stands in for aiokafka, switched up and down by the test, so
the emitter's real sender loop runs (connect retries, failed batches, replay) in
milliseconds. The fault suite (tests/fault/test_broker_pause.py) does the same against a
real broker frozen with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from spendstream.producers import Emitter, UsageEvent, _delivery, _spill
from spendstream.producers._spill import HEADER, SpillFile
from spendstream.settings import Settings

NOWHERE = "127.0.0.1:9"
LOGGER = "spendstream.producers.emitter"


class FakeBroker:
    """What a fake producer delivers to; ``up`` False: connections and sends fail."""

    def __init__(self) -> None:
        self.up = False
        self.log: list[tuple[bytes | None, bytes]] = []

    def producer(self) -> FakeProducer:
        return FakeProducer(self)


class FakeProducer:
    """The part of AIOKafkaProducer the emitter uses."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker

    async def start(self) -> None:
        if not self.broker.up:
            raise KafkaConnectionError("fake broker down")

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}  # one partition: the log's order is the emit order

    async def send(self, topic: str, value: bytes, key: bytes | None, partition: int | None,
                   headers: list[tuple[str, bytes]]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broker.up:
            self.broker.log.append((key, value))
            fut.set_result(None)
        else:
            fut.set_exception(KafkaTimeoutError())
        return fut

    async def stop(self) -> None:
        pass


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_delivery, "BACKOFF_FIRST", 0.005)
    monkeypatch.setattr(_delivery, "BACKOFF_MAX", 0.02)


def _event(i: int) -> UsageEvent:
    return UsageEvent(event_id=f"ev-{i:05d}", user_id=f"acct-{i % 3}", feature="chat",
                      model="gpt-4o", input_tokens=i)


def _ids(log: list[tuple[bytes | None, bytes]]) -> list[str]:
    import orjson

    events = [orjson.loads(value) for _, value in log]
    return [e["event_id"] for one in events for e in (one if isinstance(one, list) else [one])]


def _emitter(broker: FakeBroker, spill_dir: Path, **kw: Any) -> Emitter:
    emitter = Emitter(NOWHERE, "usage", spill_dir=spill_dir, **kw)
    emitter._new_producer = broker.producer  # type: ignore[assignment,method-assign]
    return emitter


async def _until(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def test_a_full_buffer_spills_instead_of_dropping(tmp_path: Path) -> None:
    emitter = Emitter(NOWHERE, "usage", buffer_size=3, spill_dir=tmp_path)
    assert all(emitter.emit(_event(i)) for i in range(10))
    s = emitter.stats
    assert (s.emitted, s.spilled, s.dropped, s.buffered) == (10, 7, 0, 10)
    assert emitter.spill_path == tmp_path / "usage.spill"
    assert stat.S_IMODE(os.stat(emitter.spill_path).st_mode) == 0o600


async def test_replay_keeps_the_emit_order_across_memory_and_file(tmp_path: Path) -> None:
    broker = FakeBroker()
    emitter = _emitter(broker, tmp_path, buffer_size=5)
    await emitter.start()
    for i in range(40):
        emitter.emit(_event(i))
    assert emitter.stats.spilled == 35
    broker.up = True
    # Events emitted while the file drains queue behind it, even with memory free again.
    for i in range(40, 60):
        emitter.emit(_event(i))
        await asyncio.sleep(0)
    assert await emitter.flush(5)
    assert _ids(broker.log) == [f"ev-{i:05d}" for i in range(60)]
    s = emitter.stats
    assert s.sent == 60 and s.dropped == 0 and s.replayed == s.spilled >= 35
    # Drained: the file is empty again and new events use memory.
    assert os.path.getsize(tmp_path / "usage.spill") == HEADER.size
    spilled = s.spilled
    emitter.emit(_event(60))
    assert emitter.stats.spilled == spilled
    assert await emitter.stop()
    assert not (tmp_path / "usage.spill").exists()  # nothing left to replay: no file


async def test_a_failed_replay_batch_is_retried_in_place(tmp_path: Path) -> None:
    broker = FakeBroker()
    emitter = _emitter(broker, tmp_path, buffer_size=2)
    await emitter.start()
    for i in range(10):
        emitter.emit(_event(i))
    broker.up = True
    await _until(lambda: emitter.stats.replayed > 0, "a first replayed batch")
    broker.up = False  # down again mid-replay
    for i in range(10, 15):
        emitter.emit(_event(i))
    await asyncio.sleep(0.05)
    broker.up = True
    assert await emitter.flush(5)
    ids = _ids(broker.log)
    assert sorted(set(ids)) == [f"ev-{i:05d}" for i in range(15)]
    assert ids == sorted(ids)
    await emitter.stop()


def test_the_size_cap_drops_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    one = len(_event(0).to_json()) + len(_event(0).key) + 12
    emitter = Emitter(NOWHERE, buffer_size=2, spill_dir=tmp_path,
                      spill_max_bytes=HEADER.size + 3 * one + 10)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        accepted = [emitter.emit(_event(i)) for i in range(10)]
    assert accepted == [True] * 5 + [False] * 5
    assert (emitter.stats.spilled, emitter.stats.dropped) == (3, 5)
    assert any("cap" in r.getMessage() for r in caplog.records)


def test_an_unusable_spill_dir_falls_back_to_dropping(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        emitter = Emitter(NOWHERE, buffer_size=1, spill_dir=not_a_dir / "spill")
    assert emitter.spill_path is None
    assert "cannot use spill directory" in caplog.text
    assert [emitter.emit(_event(i)) for i in range(3)] == [True, False, False]
    assert emitter.stats.dropped == 2


def test_a_failed_write_counts_its_events_as_dropped(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    emitter = Emitter(NOWHERE, "usage", buffer_size=1, spill_dir=tmp_path)
    for i in range(4):
        emitter.emit(_event(i))

    def disk_full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_spill.os, "pwrite", disk_full)
    emitter._outage("test")  # flushes the spill file, as the sender does during an outage
    monkeypatch.undo()
    s = emitter.stats
    assert (s.emitted, s.spilled, s.dropped, s.buffered) == (4, 3, 3, 1)
    assert os.path.getsize(tmp_path / "usage.spill") == HEADER.size  # no half record left
    assert emitter.emit(_event(9))  # and spilling goes on once the disk has room
    assert emitter.stats.buffered == 2


async def test_stop_keeps_undelivered_events_for_the_next_emitter(tmp_path: Path) -> None:
    broker = FakeBroker()
    first = _emitter(broker, tmp_path, buffer_size=5)
    await first.start()
    for i in range(20):
        first.emit(_event(i))
    assert await first.stop(timeout=0.2) is False
    assert first.stats.dropped == 0  # 15 in the file, the 5 in memory put before them

    second = _emitter(broker, tmp_path, buffer_size=5)
    assert second.stats.buffered == 20
    second.emit(_event(20))  # queued behind the earlier process's events
    broker.up = True
    await second.start()
    assert await second.flush(5)
    assert _ids(broker.log) == [f"ev-{i:05d}" for i in range(21)]
    assert second.stats.replayed == 21
    await second.stop()


def test_a_crashed_process_file_is_replayed_without_its_torn_tail(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    crashed = SpillFile.claim(tmp_path, "usage", 1 << 20)
    assert crashed is not None
    for i in range(6):
        crashed.append(b"k", f"v{i}".encode())
    crashed.flush()
    # Three were delivered and committed before the crash.
    batch, pos, _ = crashed.read(3, crashed.take_end())
    crashed.consumed(3, pos)
    crashed.commit()
    end = os.fstat(crashed._fd).st_size
    os.pwrite(crashed._fd, b"\x00\x00\x00\x01\x00\x00", end)  # a record cut mid-header
    os.close(crashed._fd)  # the process dies: its lock goes with it

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        emitter = Emitter(NOWHERE, "usage", spill_dir=tmp_path)
    assert emitter.spill_path == tmp_path / "usage.spill"
    assert emitter.stats.buffered == 3
    assert "torn record" in caplog.text and "earlier process" in caplog.text
    spill = emitter._spill
    assert spill is not None
    messages, _, damaged = spill.read(10, spill.take_end())
    assert [v for _, v in messages] == [b"v3", b"v4", b"v5"] and damaged == 0


def test_a_damaged_record_is_skipped_and_counted(tmp_path: Path) -> None:
    spill = SpillFile.claim(tmp_path, "usage", 1 << 20)
    assert spill is not None
    for i in range(3):
        spill.append(b"k", f"value-{i}".encode())
    end = spill.take_end()
    second = HEADER.size + (12 + 1 + 7) + 12 + 1  # the second record's value
    os.pwrite(spill._fd, b"X", second)
    messages, pos, damaged = spill.read(10, end)
    assert [v for _, v in messages] == [b"value-0", b"value-2"] and damaged == 1
    assert pos == end


def test_emitters_sharing_a_directory_take_separate_files(tmp_path: Path) -> None:
    a = Emitter(NOWHERE, "usage", spill_dir=tmp_path)
    b = Emitter(NOWHERE, "usage", spill_dir=tmp_path)
    assert a.spill_path == tmp_path / "usage.spill"
    assert b.spill_path == tmp_path / "usage.1.spill"
    asyncio.run(a.stop(timeout=0))
    c = Emitter(NOWHERE, "usage", spill_dir=tmp_path)
    assert c.spill_path == tmp_path / "usage.spill"


def test_emit_spills_what_memory_cannot_hold(tmp_path: Path) -> None:
    """Past a one-event buffer, every event goes to the spill file and none is dropped
    (what a call costs while spilling is a benchmark figure, bench/guard_bench.py)."""
    emitter = Emitter(NOWHERE, buffer_size=1, spill_dir=tmp_path)
    event = _event(0)
    n = 20_000
    for _ in range(n):
        emitter.emit(event)
    assert emitter.stats.spilled == n - 1 and emitter.stats.dropped == 0


def test_settings_give_the_spill_dir_and_cap(tmp_path: Path) -> None:
    s = Settings(_env_file=None, state_dir=tmp_path)  # type: ignore[call-arg]
    assert s.emitter_spill_dir == tmp_path / "spill"
    emitter = Emitter.from_settings(s, buffer_size=1)
    assert emitter.spill_path == tmp_path / "spill" / "spendstream.usage.spill"
    off = Settings(_env_file=None, state_dir=tmp_path, spill_max_bytes=0)  # type: ignore[call-arg]
    assert off.emitter_spill_dir is None
    assert Emitter.from_settings(off).spill_path is None


def test_a_sender_that_outlives_stop_waits_instead_of_spinning(tmp_path: Path) -> None:
    # stop() waits a bounded time for the sender to end (a cancel can be swallowed inside
    # the producer's cleanup) and then closes the spill file. A sender left running after
    # that once looked for the closed file without ever awaiting: the event loop spun at
    # 100% CPU for good. Run in a thread, so that failure is a failed assert, not a hang.
    broker = FakeBroker()

    async def scenario() -> None:
        emitter = _emitter(broker, tmp_path, buffer_size=2)
        await emitter.start()
        for i in range(6):
            emitter.emit(_event(i))
        assert emitter.stats.spilled == 4
        assert await emitter.stop(timeout=0.2) is False  # broker down: kept in the file
        outlived = asyncio.create_task(emitter._send_loop(broker.producer()))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)  # never returns while a task spins
        outlived.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await outlived

    runner = threading.Thread(target=lambda: asyncio.run(scenario()), daemon=True)
    runner.start()
    runner.join(10)
    assert not runner.is_alive(), "the sender spun after stop()"
