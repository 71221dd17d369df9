"""Event-to-flag latency: how long after an app publishes the event that takes a user over
budget the ``cutoff:user:{u}`` flag is in Redis, under a steady paced load.

A paced producer publishes background traffic at a fixed rate; every so often one event
instead goes to a *probe* user (``probe`` tier) and costs more than that user's whole
budget. The moment just before ``send`` is the probe's publish time. A thread polls Redis
every few milliseconds (one pipeline of ``EXISTS`` over the pending probes' cutoff keys)
and records when each flag appears.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from _kafka import Rate, producer, send
from _traffic import Traffic

from spendstream.contract.keys import cutoff_user

POLL = 0.005


class CutoffWatcher(threading.Thread):
    """Records, per probe user, the seconds from publish to its cutoff flag in Redis."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        super().__init__(name="cutoff-watcher", daemon=True)
        self.redis = redis.Redis.from_url(redis_url)
        self.prefix = prefix
        self.latency: dict[str, float] = {}
        """Seconds from publish to flag, per probe user, in the order the flags appeared."""
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def expect(self, user: str, published: float) -> None:
        """Start waiting for ``user``'s cutoff flag; ``published`` is ``perf_counter()``."""
        with self._lock:
            self._pending[user] = published

    @property
    def pending(self) -> int:
        """Probes whose flag has not appeared yet."""
        with self._lock:
            return len(self._pending)

    def run(self) -> None:
        """Poll until :meth:`stop`."""
        while not self._stopped.is_set():
            with self._lock:
                users = list(self._pending)
            if users:
                pipe = self.redis.pipeline(transaction=False)
                for u in users:
                    pipe.exists(self.prefix + cutoff_user(u))
                found = pipe.execute()
                now = time.perf_counter()
                with self._lock:
                    for u, hit in zip(users, found, strict=True):
                        if hit:
                            self.latency[u] = now - self._pending.pop(u)
            self._stopped.wait(POLL)

    def stop(self) -> None:
        """End the polling thread."""
        self._stopped.set()
        self.join(5)
        self.redis.close()


@dataclass(frozen=True, slots=True)
class LatencyResult:
    """Latencies of the probes (seconds), the probes never flagged, and the load offered."""

    latencies: list[float]
    """In the order the probes were published."""
    missing: int
    offered: Rate

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile over every probe; a missing probe counts as infinite."""
        values = sorted(self.latencies) + [math.inf] * self.missing
        if not values:
            return math.inf
        return values[max(0, math.ceil(q * len(values)) - 1)]

    def trend(self) -> tuple[float, float]:
        """Median latency of the first and of the last tenth of the probes: a rise means the
        worker fell behind the offered load (a backlog), not a slow path per event."""
        k = max(1, len(self.latencies) // 10)
        return (sorted(self.latencies[:k])[k // 2], sorted(self.latencies[-k:])[k // 2])


async def steady_publish(bootstrap: str, topic: str, traffic: Traffic, rate: float,
                         seconds: float, probes: list[str], watcher: CutoffWatcher,
                         packed: bool = True) -> Rate:
    """Publish ``rate`` events/s for ``seconds``, spreading the probes evenly; the probes
    replace background events, so the offered rate stays ``rate``. Every tick's events go
    out as one emitter round (packed per partition, as the SDK does)."""
    p = producer(bootstrap, linger_ms=5)  # the emitter's default linger
    await p.start()
    sent = probed = 0
    futures: list[asyncio.Future[object]] = []
    started = time.perf_counter()
    try:
        partitions = len(await p.partitions_for(topic))
        while (elapsed := time.perf_counter() - started) < seconds:
            tick: list[tuple[bytes, bytes]] = []
            due = int(rate * elapsed)
            while sent < due:
                if probed < len(probes) and elapsed >= (probed + 0.5) * seconds / len(probes):
                    user = probes[probed]
                    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    key, value = traffic.probe(user, ts)
                    watcher.expect(user, time.perf_counter())
                    probed += 1
                else:
                    key, value = traffic.event()
                tick.append((key, value))
                sent += 1
            futures.extend(await send(p, topic, tick, partitions, packed))
            await asyncio.sleep(0.002)
        offered = Rate(sent, time.perf_counter() - started)
        await asyncio.gather(*futures)
    finally:
        await p.stop()
    return offered


def wait_probes(watcher: CutoffWatcher, timeout: float) -> None:
    """Give the worker ``timeout`` s after the load ends to flag the last probes."""
    deadline = time.monotonic() + timeout
    while watcher.pending and time.monotonic() < deadline:
        time.sleep(0.1)
