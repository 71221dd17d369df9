"""``SyncEmitter`` across the process's life, in real subprocesses against the real broker:
events emitted by a script that never calls ``close`` are delivered at interpreter exit
(within a bound when Kafka is unreachable), and a forked child gets a sender of its own."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import orjson
import pytest

from spendstream.embedded import free_port
from spendstream.streams.topics import ensure_topics
from tests.helpers import read_topic, record_events

pytestmark = pytest.mark.integration


def run(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=timeout)


def users_on(bootstrap: str, topic: str, n: int) -> list[str]:
    records = asyncio.run(read_topic(bootstrap, topic, n, timeout=15))
    return sorted(orjson.loads(e)["user_id"] for r in records for e in record_events(r))


def test_events_are_delivered_at_exit_without_close(broker, uid):
    topic = f"t{uid}.usage"
    asyncio.run(ensure_topics(broker.bootstrap, [topic], 2))
    out = run(f"""
        from spendstream.producers import SyncEmitter, UsageEvent
        emitter = SyncEmitter({broker.url!r}, {topic!r})
        for i in range(5):
            emitter.emit(UsageEvent(user_id=f"u{{i}}", feature="chat", model="gpt-4o"))
        print("done")  # no close(): the interpreter's exit flushes
        """)
    assert out.returncode == 0 and out.stdout == "done\n", out.stderr
    assert users_on(broker.bootstrap, topic, 5) == [f"u{i}" for i in range(5)]


def test_exit_waits_at_most_exit_timeout_for_an_unreachable_broker(uid):
    started = time.monotonic()
    out = run(f"""
        from spendstream.producers import SyncEmitter, UsageEvent
        emitter = SyncEmitter("kafka://127.0.0.1:{free_port()}", "t{uid}", exit_timeout=1.0,
                              spill_max_bytes=0)
        emitter.emit(UsageEvent(user_id="u", feature="chat", model="gpt-4o"))
        """, timeout=30)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - started < 12  # interpreter start + 1 s flush + thread stop


def test_a_forked_child_gets_a_sender_of_its_own(broker, uid):
    topic = f"t{uid}.usage"
    asyncio.run(ensure_topics(broker.bootstrap, [topic], 2))
    out = run(f"""
        import os
        from spendstream.producers import SyncEmitter, UsageEvent

        def event(user):
            return UsageEvent(user_id=user, feature="chat", model="gpt-4o")

        emitter = SyncEmitter({broker.url!r}, {topic!r})
        emitter.emit(event("parent-before"))
        assert emitter.flush(10)
        pid = os.fork()
        if pid == 0:  # the child: like a gunicorn worker after --preload
            for i in range(3):
                emitter.emit(event(f"child-{{i}}"))
            ok = emitter.close(10)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        emitter.emit(event("parent-after"))
        print(os.waitstatus_to_exitcode(status), emitter.close(10))
        """)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "0 True\n", (out.stdout, out.stderr)
    assert users_on(broker.bootstrap, topic, 5) == [
        "child-0", "child-1", "child-2", "parent-after", "parent-before"]
