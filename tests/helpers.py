"""Polling helpers and a worker-process fixture builder shared by integration tests."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from spendstream.producers._packing import EVENTS_HEADER

T = TypeVar("T")


def wait_until(fn: Callable[[], T], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.05, check: Callable[[], None] | None = None) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` on timeout.

    ``check`` runs on each poll and may raise (e.g. when the worker process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(condition: Callable[[], object], timeout: float = 30.0,
                           what: str = "condition", interval: float = 0.05) -> None:
    """:func:`wait_until` for code on an event loop: polls without blocking the loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def send_in_order(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]
                        ) -> None:
    """Send ``(key, value)`` pairs in order, each acknowledged before the next."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, n: int, timeout: float = 30.0) -> list[Any]:
    """At least ``n`` records of ``topic`` from its start, or all there are after ``timeout``."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest",
                                fetch_max_bytes=8 * 1024 * 1024,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    got: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(msgs)
    finally:
        await consumer.stop()
    return got


def record_events(record: Any) -> list[bytes]:
    """The single-event JSON of each event a usage-topic record carries: its value, or each
    element of a packed record's array (checked against the record's count header)."""
    value = record.value or b""
    if not value.startswith(b"["):
        return [value]
    elements = orjson.loads(value)
    assert record.key is None, "a packed record has no key"
    assert dict(record.headers)[EVENTS_HEADER] == str(len(elements)).encode()
    return [orjson.dumps(e) for e in elements]


def worker_env(env: dict[str, str]) -> dict[str, str]:
    """A worker's environment: the process's, a free metrics port (tests run several
    workers at once), then ``env``."""
    from spendstream.embedded import free_port

    return {**os.environ, "SPENDSTREAM_METRICS_PORT": str(free_port()), **env}


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    """GET ``path`` from a worker's metrics port: (status, body); (0, "") when nothing
    answers yet."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when it is absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


class WorkerProcess:
    """``spendstream worker`` as a child process, the way an operator runs it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.env = worker_env(env)
        self.metrics_port = int(self.env["SPENDSTREAM_METRICS_PORT"])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spendstream", "worker", "--log-level", "warning"],
            env=self.env, stdout=self._out, stderr=subprocess.STDOUT)

    def alive(self) -> None:
        """Raise with the worker's log when it has exited."""
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output()}")

    def output(self) -> str:
        """Everything the worker printed so far."""
        self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (a graceful stop drains alerts and flags)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode
