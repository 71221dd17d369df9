"""An emitter whose broker is unreachable: the application never notices, beyond a log line.

The address is a free loopback port with nothing listening, so every connection attempt
is refused at once and the emitter's retry loop runs for real.
"""

from __future__ import annotations

import logging
import time

import pytest

from spendstream.embedded import free_port
from spendstream.producers import Emitter, SyncEmitter, UsageEvent
from tests.helpers import wait_until_async

pytestmark = pytest.mark.integration

LOGGER = "spendstream.producers.emitter"


def _event(i: int) -> UsageEvent:
    return UsageEvent(user_id=f"acct-{i % 3}", feature="chat", model="gpt-4o", input_tokens=i)


async def test_emitter_buffers_drops_and_never_raises_when_kafka_is_down(
        caplog: pytest.LogCaptureFixture) -> None:
    emitter = Emitter(f"127.0.0.1:{free_port()}", "usage", buffer_size=10)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    started = time.monotonic()
    await emitter.start()
    accepted = [emitter.emit(_event(i)) for i in range(25)]
    assert time.monotonic() - started < 1.0
    assert accepted == [True] * 10 + [False] * 15
    assert (emitter.stats.emitted, emitter.stats.dropped, emitter.stats.buffered) == (10, 15, 10)

    started = time.monotonic()
    assert await emitter.flush(0.5) is False
    assert 0.4 < time.monotonic() - started < 2.0

    # Several refused connection attempts, one warning: logged per outage, not per attempt.
    def attempts() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "cannot connect" in r.getMessage()]
    await wait_until_async(lambda: len(attempts()) >= 3, 10, "three connection attempts")
    assert [r.levelno for r in attempts()].count(logging.WARNING) == 1

    started = time.monotonic()
    assert await emitter.stop(timeout=0.5) is False
    assert time.monotonic() - started < 3.0
    # The 10 it held are lost with the process, and said so.
    assert (emitter.stats.sent, emitter.stats.dropped, emitter.stats.buffered) == (0, 25, 0)
    assert emitter.emit(_event(99)) is False
    assert emitter.stats.dropped == 26


def test_sync_emitter_never_blocks_the_app_when_kafka_is_down() -> None:
    started = time.monotonic()
    emitter = SyncEmitter(f"127.0.0.1:{free_port()}", "usage", buffer_size=50)
    assert time.monotonic() - started < 1.0
    try:
        events = [_event(i) for i in range(60)]
        started = time.perf_counter()
        accepted = [emitter.emit(e) for e in events]
        # Waiting on the dead broker would take a connection attempt per call (seconds);
        # the per-call cost itself is a benchmark figure (bench/guard_bench.py).
        assert time.perf_counter() - started < 1.0
        assert accepted.count(True) == 50 and emitter.stats.dropped == 10
        assert emitter.flush(0.3) is False
    finally:
        started = time.monotonic()
        assert emitter.close(timeout=0.3) is False
        assert time.monotonic() - started < 3.0
    assert emitter.stats.dropped == 60
