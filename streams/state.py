"""Worker state: aggregates in memory, logged as one changelog record per partition per batch.

One changelog record per changed key (what a faust table does) costs a producer send per
key: at one user per event that is the worker's whole budget. Here a batch's changes to
one partition (new values of the keys it touched, the event ids it saw, the highest
source offset) travel as one record, so they are restored together or not at all: the
aggregates and the dedup ids of a partition always agree, which is what lets a replay
after a crash skip exactly the events already counted.

Blob records have unique keys, so log compaction alone would keep them all. When the
records written since the last snapshot outweigh the live state (a ratio, like an LSM
compaction), the partition is written out as snapshot chunks and the older records are
tombstoned; recovery is then the snapshot plus the records after it. Values are kept as
compact JSON bytes (a few dozen bytes per user), decoded only for the keys a batch touches.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

Log = Callable[[int, bytes, bytes | None], None]
"""Send ``(partition, key, value)`` to the changelog; a ``None`` value is a tombstone."""

SNAPSHOT_MIN_BYTES = 4 * 1024 * 1024
"""Below this much logged since the last snapshot, never snapshot (small state, cheap replay)."""
SNAPSHOT_RATIO = 2
"""Snapshot once the records logged since the last one weigh this many times the live state."""
CHUNK_KEYS = 5000
"""Keys (or ids) per snapshot record: keeps every record far below broker size limits."""


def id_hash(event_id: str) -> int:
    """A 128-bit digest of an event id: a third of the memory of the id, no practical collisions."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=16).digest(), "big")


def identity_hash(user_id: str, event_id: str) -> int:
    """The digest of an event's dedup identity, (``user_id``, ``event_id``): two users'
    events never deduplicate each other (ids hold no control characters, so the separator
    cannot be forged)."""
    return id_hash(f"{user_id}\x1f{event_id}")


class Dedup:
    """Event ids seen by one partition, forgotten after ``horizon`` seconds (processing time).

    Ids live in generations of ``horizon / 6`` seconds, so expiry drops whole sets instead of
    scanning. A redelivery arriving later than the horizon is counted again: the emitter
    redelivers within seconds of reconnecting, so the default hour is a wide margin.
    """

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self.step = max(horizon / 6, 1.0)
        self.generations: dict[int, set[int]] = {}

    def __contains__(self, digest: int) -> bool:
        for ids in self.generations.values():  # noqa: SIM110 - any() costs a generator per event
            if digest in ids:
                return True
        return False

    def add(self, digest: int, now: float) -> None:
        """Remember ``digest`` as seen at epoch ``now``."""
        gen = int(now // self.step)
        ids = self.generations.get(gen)
        if ids is None:
            ids = self.generations[gen] = set()
            self.expire(now)
        ids.add(digest)

    def expire(self, now: float) -> int:
        """Forget generations older than the horizon; returns how many ids went."""
        oldest = int((now - self.horizon) // self.step)
        stale = [g for g in self.generations if g < oldest]
        return sum(len(self.generations.pop(g)) for g in stale)

    def __len__(self) -> int:
        return sum(len(ids) for ids in self.generations.values())


class PartitionState:
    """The keys, dedup ids and log bookkeeping of one source partition."""

    __slots__ = ("records", "dedup", "dirty", "new_ids", "offset", "seq", "logged",
                 "logged_bytes", "next_check", "chunks", "tracked")

    def __init__(self, dedup_horizon: float) -> None:
        self.records: dict[str, bytes] = {}
        self.dedup = Dedup(dedup_horizon)
        self.dirty: dict[str, bytes | None] = {}
        self.new_ids: list[int] = []
        self.offset = -1
        """Highest source offset folded into this state (restored with it)."""
        self.seq = 0
        self.logged: list[bytes] = []
        """Keys of the batch records written since the last snapshot (tombstoned by the next)."""
        self.logged_bytes = 0
        self.next_check = 0
        """Logged bytes at which the state is next sized for a snapshot."""
        self.chunks = 0
        """Number of chunks in the current snapshot."""
        self.tracked = False
        """Whether a key with one of the state's tracked prefixes was ever set here."""

    def remember(self, digest: int, offset: int, now: float) -> None:
        """Record an event as counted at epoch ``now``: its id digest and its offset."""
        self.dedup.add(digest, now)
        self.new_ids.append(digest)
        if offset > self.offset:
            self.offset = offset


class BatchedState:
    """Per-partition key/value aggregates with a batched changelog (see the module docstring).

    ``log`` sends one record; the faust table in ``app.py`` provides it and feeds recovered
    records back through :meth:`apply`.
    """

    def __init__(self, log: Log, dedup_horizon: float = 3600.0,
                 clock: Callable[[], float] = time.time, tracked: tuple[str, ...] = ()
                 ) -> None:
        self.log = log
        self.tracked = tracked
        """Prefixes of rare keys that are looked up often (a user's grants): for each
        partition the state knows whether it ever held one (:meth:`may_hold`)."""
        self.dedup_horizon = dedup_horizon
        self.clock = clock
        self.partitions: dict[int, PartitionState] = {}

    def part(self, partition: int) -> PartitionState:
        """The state of ``partition``, created empty on first use."""
        p = self.partitions.get(partition)
        if p is None:
            p = self.partitions[partition] = PartitionState(self.dedup_horizon)
        return p

    # --- reads and writes of the current batch -------------------------------------------

    def get(self, partition: int, key: str) -> dict[str, Any] | None:
        """The current value of ``key`` (including this batch's writes), or ``None``."""
        raw = self.get_raw(partition, key)
        return None if raw is None else orjson.loads(raw)

    def put(self, partition: int, key: str, value: dict[str, Any] | None) -> None:
        """Set (``None`` deletes) ``key``; logged with the batch at :meth:`commit`."""
        # A copy: orjson hands back its 4 KiB working buffer, which would be kept per key.
        self.put_raw(partition, key,
                     None if value is None else memoryview(orjson.dumps(value)).tobytes())

    def get_raw(self, partition: int, key: str) -> bytes | None:
        """The current value of ``key`` as stored (compact JSON), or ``None``."""
        p = self.part(partition)
        return p.dirty[key] if key in p.dirty else p.records.get(key)

    def put_raw(self, partition: int, key: str, value: bytes | None) -> None:
        """:meth:`put` of a value already encoded as compact JSON (``None`` deletes)."""
        p = self.part(partition)
        p.dirty[key] = value
        if self.tracked and key.startswith(self.tracked):
            p.tracked = True

    def may_hold(self, partition: int, prefix: str) -> bool:
        """``False`` only when ``partition`` never held a key starting with ``prefix``,
        one of the tracked prefixes (for any other prefix: ``True``)."""
        return prefix not in self.tracked or self.part(partition).tracked

    def seen(self, partition: int, digest: int) -> bool:
        """True when an event with this id digest was already counted in ``partition``."""
        return digest in self.part(partition).dedup

    def remember(self, partition: int, digest: int, offset: int) -> None:
        """Record an event as counted (its id, and the source offset reached)."""
        self.part(partition).remember(digest, offset, self.clock())

    def offset(self, partition: int) -> int:
        """Highest source offset folded into ``partition``'s state (-1: none)."""
        return self.part(partition).offset

    def scan(self) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """Every committed ``(partition, key, value)`` held by this process (a snapshot)."""
        for n, p in list(self.partitions.items()):
            for key, raw in list(p.records.items()):
                yield n, key, orjson.loads(raw)

    def keys(self, partition: int) -> list[str]:
        """Committed keys of ``partition``."""
        return list(self.part(partition).records)

    def drop(self, partition: int) -> None:
        """Forget a partition (revoked: its owner is now another worker)."""
        self.partitions.pop(partition, None)

    # --- the changelog -------------------------------------------------------------------

    def commit(self) -> int:
        """Apply and log this batch's changes: one record per changed partition.

        Returns the number of records sent (batches plus any snapshot chunks).
        """
        now = self.clock()
        sent = 0
        for n, p in self.partitions.items():
            if not p.dirty and not p.new_ids:
                continue
            body = orjson.dumps({"t": now, "o": p.offset, "r": p.dirty,
                                 "i": [format(d, "x") for d in p.new_ids]},
                                default=_bytes_as_str)
            for name, raw in p.dirty.items():
                if raw is None:
                    p.records.pop(name, None)
                else:
                    p.records[name] = raw
            p.dirty = {}
            p.new_ids = []
            record = f"b|{n}|{p.seq}".encode()
            p.seq += 1
            self.log(n, record, body)
            p.logged.append(record)
            p.logged_bytes += len(body)
            sent += 1
            # Sizing the state walks every key: do it only when the log has doubled since.
            if p.logged_bytes > max(SNAPSHOT_MIN_BYTES, p.next_check):
                if p.logged_bytes > SNAPSHOT_RATIO * self._size(p):
                    sent += self._snapshot(n, p, now)
                else:
                    p.next_check = 2 * p.logged_bytes
        return sent

    @staticmethod
    def _size(p: PartitionState) -> int:
        # Roughly what a snapshot of the partition weighs on the log.
        return sum(len(k) + len(v) for k, v in p.records.items()) + 34 * len(p.dedup)

    def _snapshot(self, n: int, p: PartitionState, now: float) -> int:
        """Write the partition as chunks, then tombstone what the chunks supersede."""
        records = list(p.records.items())
        ids = [format(d, "x") for gen in p.dedup.generations.values() for d in gen]
        chunks = 0
        for i in range(0, max(len(records), len(ids), 1), CHUNK_KEYS):
            part = dict(records[i:i + CHUNK_KEYS])
            body = orjson.dumps({"t": now, "o": p.offset, "r": part,
                                 "i": ids[i:i + CHUNK_KEYS]}, default=_bytes_as_str)
            self.log(n, f"s|{n}|{chunks}".encode(), body)
            chunks += 1
        for stale in range(chunks, p.chunks):
            self.log(n, f"s|{n}|{stale}".encode(), None)
        for key in p.logged:
            self.log(n, key, None)
        sent = chunks + max(p.chunks - chunks, 0) + len(p.logged)
        p.chunks = chunks
        p.logged = []
        p.logged_bytes = 0
        p.next_check = 0
        return sent

    def apply(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Replay one changelog record (recovery). Tombstones only retire superseded records."""
        if value is None:
            return
        body = orjson.loads(value)
        p = self.part(partition)
        for k, raw in body["r"].items():
            if raw is None:
                p.records.pop(k, None)
            else:
                p.records[k] = memoryview(orjson.dumps(raw)).tobytes()
                if self.tracked and k.startswith(self.tracked):
                    p.tracked = True
        if body["t"] > self.clock() - self.dedup_horizon:
            for hexid in body["i"]:
                p.dedup.add(int(hexid, 16), body["t"])
        p.offset = max(p.offset, body["o"])
        name = key.decode()
        if name.startswith("b|"):
            p.seq = max(p.seq, int(name.rsplit("|", 1)[1]) + 1)
            p.logged.append(key)
            p.logged_bytes += len(value)
        else:
            p.chunks = max(p.chunks, int(name.rsplit("|", 1)[1]) + 1)


def _bytes_as_str(obj: Any) -> Any:
    # Values are stored as JSON bytes already; embed them as JSON, not as strings.
    if isinstance(obj, bytes):
        return orjson.Fragment(obj)
    raise TypeError
