"""Flags and live spend in Redis: a port, and a coalescing, batching Redis adapter.

The worker never waits on Redis. Writes are coalesced per key (the newest value wins),
flushed in one pipeline per interval, and kept and retried while Redis is down, so the
flags converge once it returns. A Redis that may have lost its data (it was unreachable,
or its ``run_id`` changed: a restart, seen even while the worker is idle) gets every live
flag again, and the worker's ``on_recover`` hook rewrites every live spend key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from spendstream.contract import keys

log = logging.getLogger("spendstream.flags")

SET_MANY = """
local names, values, expires = ARGV[1], ARGV[2], ARGV[3]
local k, v, e, n = 1, 1, 1, 0
while k <= #names do
  local kn = string.find(names, '\\n', k, true) or (#names + 1)
  local vn = string.find(values, '\\n', v, true) or (#values + 1)
  local en = string.find(expires, '\\n', e, true) or (#expires + 1)
  redis.call('SET', string.sub(names, k, kn - 1), string.sub(values, v, vn - 1),
             'EXAT', string.sub(expires, e, en - 1))
  k, v, e, n = kn + 1, vn + 1, en + 1, n + 1
end
return n
"""
"""``SET key value EXAT t`` for many keys in one command. The keys, the values and the
expiry times each travel as one argument joined by newlines (compact JSON never holds a
raw newline; a key that holds one is written with its own ``SET``): redis-py packs each
argument in Python, 1.5 µs of CPU per key when each key was an argument of its own, 0.3
µs joined (a pipeline of single SETs was ~15 µs per key). The keys are not declared to
the script, which Redis Cluster would refuse; Cluster is not supported
(``docs/operations.md``)."""
SET_MANY_KEYS = 1000
PROBE_INTERVAL = 1.0
"""Seconds between two checks of Redis's ``run_id`` (one ``INFO server``)."""


class FlagStore(Protocol):
    """Where decisions go: cutoff/warn flags and live spend, each expiring at a window end."""

    def set(self, key: str, value: dict[str, Any] | bytes, expire_at: int, *,
            extend_only: bool = False) -> None:
        """Schedule ``key = value`` (a dict, or its JSON already encoded) expiring at epoch
        ``expire_at``."""

    def delete(self, key: str) -> None:
        """Schedule the removal of ``key``."""


@dataclass(slots=True)
class FlagStats:
    """Counters for status output and tests."""

    written: int = 0
    flushes: int = 0
    errors: int = 0
    skipped_expired: int = 0


class RedisFlagSink:
    """A :class:`FlagStore` on Redis (redis-py asyncio), batched and outage-tolerant."""

    def __init__(self, url: str, prefix: str = "spendstream:", interval: float = 0.25,
                 client: aioredis.Redis | None = None,
                 on_recover: Callable[[], None] | None = None) -> None:
        self.prefix = prefix
        self.interval = interval
        self.on_recover = on_recover
        """Called when Redis may have lost its data: the worker schedules every live spend
        key again (flags are the sink's own to rewrite)."""
        self._run_id: str | None = None
        self._next_probe = 0.0
        self._redis = client or aioredis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=10)
        self._pending: dict[str, tuple[bytes, int] | None] = {}
        self._flags: dict[str, tuple[bytes, int]] = {}
        """Cutoff and warn flags written, rewritten after an outage (Redis may have lost them)."""
        self._expiry: dict[str, int] = {}
        self._prune_at = 100_000
        self._task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._wake = asyncio.Event()
        self.stats = FlagStats()

    def set(self, key: str, value: dict[str, Any] | bytes, expire_at: int, *,
            extend_only: bool = False) -> None:
        """Schedule a write; with ``extend_only`` a live flag is never shortened by a later one."""
        full = self.prefix + key
        if extend_only:  # only these are remembered: one entry per key would be per user
            if self._expiry.get(full, 0) > max(expire_at, int(time.time())):
                return
            self._expiry[full] = expire_at
        entry = (value if type(value) is bytes else orjson.dumps(value), expire_at)
        self._pending[full] = entry
        if not keys.is_spend(key):
            self._flags[full] = entry

    def delete(self, key: str) -> None:
        """Schedule a delete."""
        full = self.prefix + key
        self._expiry.pop(full, None)
        self._flags.pop(full, None)
        self._pending[full] = None

    @property
    def pending(self) -> int:
        """Writes not yet acknowledged by Redis."""
        return len(self._pending)

    @property
    def healthy(self) -> bool:
        """False while Redis is unreachable."""
        return self._down_since is None

    async def flush(self) -> bool:
        """Write everything pending in one pipeline; keep it for a retry on failure."""
        if not self._pending:
            return True
        batch, self._pending = self._pending, {}
        now = int(time.time())
        pipe = self._redis.pipeline(transaction=False)
        keys: list[str] = []
        values: list[bytes] = []
        expires: list[bytes] = []
        texts: dict[int, bytes] = {}  # most keys of a flush share a few expiry times
        for key, entry in batch.items():
            if entry is None:
                pipe.delete(key)
            elif entry[1] <= now:
                self.stats.skipped_expired += 1
            elif "\n" in key:  # cannot travel joined
                pipe.set(key, entry[0], exat=entry[1])
            else:
                keys.append(key)
                values.append(entry[0])
                text = texts.get(entry[1])
                if text is None:
                    text = texts[entry[1]] = b"%d" % entry[1]
                expires.append(text)
                if len(keys) == SET_MANY_KEYS:
                    pipe.eval(SET_MANY, 0, "\n".join(keys), b"\n".join(values),
                              b"\n".join(expires))
                    keys, values, expires = [], [], []
        if keys:
            pipe.eval(SET_MANY, 0, "\n".join(keys), b"\n".join(values), b"\n".join(expires))
        try:
            await pipe.execute()
        except (RedisError, OSError) as e:
            for key, entry in batch.items():  # newer writes made meanwhile win
                self._pending.setdefault(key, entry)
            self.stats.errors += 1
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("Redis unreachable (%s): %d flag writes kept, retrying",
                            type(e).__name__, len(self._pending))
            return False
        if self._down_since is not None:
            log.warning("Redis is back after %.1fs; flags written",
                        time.monotonic() - self._down_since)
            self._down_since = None
            self._recover(now)
            self.stats.written += len(batch)
            self.stats.flushes += 1
            return await self.flush()
        self.stats.written += len(batch)
        self.stats.flushes += 1
        self._forget_expired(now)
        return True

    def _recover(self, now: int) -> None:
        """Redis may have come back empty: assert every live flag and spend key again."""
        self._flags = {k: v for k, v in self._flags.items() if v[1] > now}
        for k, v in self._flags.items():
            self._pending.setdefault(k, v)
        self._expiry.clear()  # extend-only writes must not be skipped for keys Redis lost
        if self.on_recover is not None:
            try:
                self.on_recover()
            except Exception:  # the sink's loop must survive a bug in the hook
                log.exception("could not schedule the live spend keys again")

    async def probe(self) -> None:
        """Notice a Redis that restarted between two writes (an idle worker writes nothing,
        so a failed write cannot tell it): its ``run_id`` changed."""
        if self._next_probe == float("inf"):
            return
        try:
            info = await self._redis.info("server")
        except ResponseError:  # INFO disabled (a managed Redis): outages still show
            self._next_probe = float("inf")
            return
        except (RedisError, OSError) as e:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("Redis unreachable (%s): %d flag writes kept, retrying",
                            type(e).__name__, len(self._pending))
            return
        run_id = info.get("run_id") if isinstance(info, dict) else None
        lost = self._down_since is not None or (
            self._run_id is not None and run_id != self._run_id)
        self._run_id = run_id
        if lost:
            if self._down_since is not None:
                log.warning("Redis is back after %.1fs", time.monotonic() - self._down_since)
            else:
                log.warning("Redis restarted (new run_id): writing every live key again")
            self._down_since = None
            self._recover(int(time.time()))

    def _forget_expired(self, now: int) -> None:
        # Rebuilding on every flush once past a fixed size was quadratic (nothing expires
        # within a day): prune only when the map has doubled since the last prune.
        if len(self._expiry) > self._prune_at:
            self._expiry = {k: v for k, v in self._expiry.items() if v > now}
            self._prune_at = max(100_000, 2 * len(self._expiry))

    async def _run(self) -> None:
        delay = self.interval
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            ok = await self.flush()
            if ok and time.monotonic() >= self._next_probe:
                await self.probe()
                self._next_probe = max(self._next_probe, time.monotonic() + PROBE_INTERVAL)
                ok = await self.flush()
            delay = self.interval if ok else min(delay * 2, 5.0)

    def start(self) -> None:
        """Start the background flush loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="flag-sink")

    def kick(self) -> None:
        """Flush soon, without waiting for the interval (after a batch with a new flag)."""
        self._wake.set()

    async def stop(self, timeout: float = 3.0) -> None:
        """Stop the loop and try one last flush."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        await self._redis.aclose()
