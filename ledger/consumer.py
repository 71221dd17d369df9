"""The ledger's own consumer: usage topic in, priced rows in PostgreSQL, offsets after.

It reads the usage topic in its own consumer group (``{app_id}.ledger``), so its position
is not the counters': a slow or stopped PostgreSQL leaves the flags and alerts alone and
only grows the ledger's own backlog in Kafka.

Exactly once in the database: a batch of records is decoded, priced and written in
transactions of about :data:`CHUNK_BYTES` of records each (:class:`LedgerWriter`,
idempotent on the event's identity), and the Kafka offsets of that batch are committed
only after the last transaction committed. A crash
between the two (SIGKILL), a rebalance or a replay re-reads records whose rows are
already in; the insert skips them and the rollup adds nothing for them.

When PostgreSQL is down or slow, the batch is kept, the partitions are paused (the
consumer keeps polling, so it stays in its group), and the write is retried with backoff;
one warning per outage, one line when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psycopg

from spendstream.contract.control import MARKER, control_of
from spendstream.contract.decode import Horizon, decode_events
from spendstream.contract.event import MAX_FUTURE_SECONDS, MalformedEvent
from spendstream.contract.ledger import GrantRow, LedgerRow, grant_row, ledger_row
from spendstream.domain.budgets import Budgets
from spendstream.domain.pricing import Pricer
from spendstream.ledger.writer import LedgerWriter
from spendstream.redact import redact_url, scrub, url_password

log = logging.getLogger("spendstream.ledger")

MAX_RECORDS = 500
"""Kafka records per batch (a packed record carries up to 500 events)."""
CHUNK_BYTES = 1 << 20
"""Record bytes per transaction (about 4,000 events): a batch is decoded and written in
groups of records this big, and its offsets are committed after the last one (a crash in
between replays the batch; the groups already in are skipped row by row, and so is their
share of the rollup)."""
WRITE_TIMEOUT = 30.0
"""A write that takes longer counts as an outage (a hung server must not hang the ledger)."""
BACKOFF = (0.2, 5.0)
"""First and longest wait between two attempts while PostgreSQL is unavailable."""


@dataclass
class LedgerStats:
    """What the ledger consumer did; read by the worker's status line and tests."""

    records: int = 0
    rows: int = 0
    written: int = 0
    """Rows that were new in the database (``rows - written`` were already there)."""
    batches: int = 0
    outages: int = 0
    refused: int = 0
    """Rows PostgreSQL refused as data (a value it cannot hold): logged and skipped, so
    one row never holds the ledger back; the worker counted their events."""
    down_since: float | None = None
    committed: dict[tuple[str, int], int] = field(default_factory=dict)


class LedgerConsumer:
    """Usage topic to ledger, one batch at a time; run with :meth:`run`."""

    def __init__(self, database_url: str, bootstrap: str, topic: str, group: str,
                 budgets: Budgets, pricer: Pricer | None = None,
                 kafka_kwargs: dict[str, Any] | None = None,
                 max_records: int = MAX_RECORDS, status_interval: float = 10.0,
                 max_future_seconds: float = MAX_FUTURE_SECONDS) -> None:
        self.database_url = database_url
        self.max_future_seconds = max_future_seconds
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.budgets = budgets
        self.pricer = pricer or Pricer(budgets.prices)
        self.kafka_kwargs = kafka_kwargs or {}
        self.max_records = max_records
        self.status_interval = status_interval
        self._next_status = time.monotonic() + status_interval
        self.stats = LedgerStats()
        self._writer: LedgerWriter | None = None
        self._tier: Callable[[str], str] = budgets.users.tier_of

    def rows(self, records: Iterable[Any]) -> list[LedgerRow | GrantRow]:
        """Decode and price records (single events or packed arrays) by the worker's rules:
        the same future horizon, the same stable id for an event without ``event_id`` (from
        its record's coordinates); what the worker dead-letters is skipped here. A grant or
        unblock (a control record) becomes a :class:`GrantRow`."""
        out: list[LedgerRow | GrantRow] = []
        horizon = Horizon(datetime.now(UTC), self.max_future_seconds)
        for record in records:
            if record.value and MARKER in record.value:
                try:
                    control = control_of(record.value)
                except MalformedEvent:  # the worker dead-letters it
                    continue
                if control is not None:
                    out.append(grant_row(control))
                    continue
            origin = (record.topic, record.partition, record.offset)
            try:
                events = decode_events(record.value, horizon, origin)
            except Exception:  # the worker dead-letters it ("could not decode")
                log.exception("ledger: skipping record %s/%d/%d the decoder failed on",
                              record.topic, record.partition, record.offset)
                continue
            for event in events:
                if isinstance(event, MalformedEvent):
                    continue
                try:
                    out.append(ledger_row(event, self.pricer, self._tier(event.user_id)))
                except Exception:  # the worker dead-letters it ("could not count")
                    log.exception("ledger: skipping event %r that could not be priced",
                                  event.event_id)
        return out

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the last written batch is committed on the way."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, group_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024, **self.kafka_kwargs)
        await consumer.start()
        log.info("ledger: consuming %s as group %s into %s", self.topic, self.group,
                 redact_url(self.database_url))
        try:
            while not stop.is_set():
                self._status()
                batches = await consumer.getmany(timeout_ms=250, max_records=self.max_records)
                records = [r for msgs in batches.values() for r in msgs]
                if records:
                    await self._store(consumer, records, stop)
        finally:
            await consumer.stop()
            if self._writer is not None:
                await self._writer.close()

    async def _store(self, consumer: Any, records: list[Any], stop: asyncio.Event) -> None:
        """Write ``records`` (retrying through outages), then commit their offsets."""
        delay = BACKOFF[0]
        while True:
            try:
                rows, written = await asyncio.wait_for(self._write(records), WRITE_TIMEOUT)
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure: keep the batch, back off, try again
                await self._drop_writer()
                self._down(e)
                if stop.is_set():
                    return  # not written, not committed: the next start reads it again
                self._status()
                consumer.pause(*consumer.assignment())
                # Polling (paused) keeps the group membership; a rebalance may hand over
                # new partitions meanwhile, whose records join this batch.
                more = await consumer.getmany(timeout_ms=int(delay * 1000),
                                              max_records=self.max_records)
                records += [r for msgs in more.values() for r in msgs]
                delay = min(delay * 2, BACKOFF[1])
        consumer.resume(*consumer.assignment())
        self._up()
        self.stats.records += len(records)
        self.stats.rows += rows
        self.stats.written += written
        self.stats.batches += 1
        await self._commit(consumer, records)

    async def _write(self, records: list[Any]) -> tuple[int, int]:
        """Decode and write ``records`` in groups, one transaction each; return the rows
        and how many were new.

        The next group is decoded while PostgreSQL works on the previous group's insert
        (the writer's ``meanwhile``): the database's half of the work (dedup, insert,
        rollup) overlaps the Python half (decode, price) instead of following it. All of
        it runs on this one thread: a decoding thread would hold the interpreter lock
        against the writer's own Python (the COPY), which then waits for it at every step.
        """
        if self._writer is None:
            self._writer = await LedgerWriter.open(self.database_url)
        groups = _groups(records, CHUNK_BYTES)
        batch = self.rows(next(groups, []))
        rows = len(batch)
        written = 0
        for group in groups:
            decoded: list[LedgerRow | GrantRow] = []
            written += await self._write_rows(batch, partial(_extend, decoded, self.rows, group))
            batch = decoded
            rows += len(batch)
        written += await self._write_rows(batch)
        return rows, written

    async def _write_rows(self, rows: list[LedgerRow | GrantRow],
                          meanwhile: Callable[[], object] | None = None) -> int:
        """Store ``rows``; when PostgreSQL refuses one as data (a class 22 error: the same
        row fails every time), the batch is split until the rows it refuses are found and
        skipped, instead of retried whole for ever."""
        ran = False

        def once() -> None:
            nonlocal ran
            if not ran and meanwhile is not None:
                ran = True
                meanwhile()

        try:
            return await self._write_group(rows, once)
        except psycopg.errors.DataError:
            once()  # the next group is decoded once, whatever failed
            return await self._write_apart(rows)

    async def _write_apart(self, rows: list[LedgerRow | GrantRow]) -> int:
        try:
            return await self._write_group(rows)
        except psycopg.errors.DataError as e:
            if len(rows) > 1:
                half = len(rows) // 2
                return await self._write_apart(rows[:half]) + await self._write_apart(
                    rows[half:])
            self.stats.refused += 1
            log.error("ledger: PostgreSQL cannot store %r (%s); skipped (the worker counted "
                      "it)", rows[0], str(e).strip())
            return 0

    async def _write_group(self, rows: list[LedgerRow | GrantRow],
                           meanwhile: Callable[[], object] | None = None) -> int:
        assert self._writer is not None
        grants = [r for r in rows if type(r) is GrantRow]
        if not grants:
            return await self._writer.write(rows, meanwhile)  # type: ignore[arg-type]
        written = await self._writer.write_grants(grants)
        return written + await self._writer.write(
            [r for r in rows if type(r) is LedgerRow], meanwhile)

    async def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):  # the connection is broken already
                await asyncio.wait_for(writer.close(), 5)

    async def _commit(self, consumer: Any, records: list[Any]) -> None:
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError

        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        try:
            await consumer.commit(offsets)
        except KafkaError as e:
            # A rebalance moved a partition away: its new owner re-reads from the last
            # commit and the database skips the rows already in. Nothing is lost.
            log.info("ledger: offsets not committed (%s); the rows are written and a "
                     "replay will skip them", type(e).__name__)
            return
        for tp, offset in offsets.items():
            self.stats.committed[(tp.topic, tp.partition)] = offset

    def _status(self) -> None:
        """Log the status line every ``status_interval`` seconds."""
        now = time.monotonic()
        if now < self._next_status:
            return
        self._next_status = now + self.status_interval
        s = self.stats
        log.info("ledger status: records %d, rows %d (new %d), batches %d, outages %d%s",
                 s.records, s.rows, s.written, s.batches, s.outages,
                 ", POSTGRES DOWN" if s.down_since is not None else "")

    def _down(self, error: Exception) -> None:
        if self.stats.down_since is not None:
            return
        self.stats.down_since = time.monotonic()
        self.stats.outages += 1
        detail = scrub(str(error).strip() or type(error).__name__, self.database_url,
                       url_password(self.database_url))
        log.warning("ledger: PostgreSQL at %s unavailable (%s: %s); the ledger waits and "
                    "retries, flags and alerts are not affected", redact_url(self.database_url),
                    type(error).__name__, detail.splitlines()[0] if detail else "")

    def _up(self) -> None:
        if self.stats.down_since is None:
            return
        took = time.monotonic() - self.stats.down_since
        self.stats.down_since = None
        log.warning("ledger: PostgreSQL is back after %.1fs; catching up from the last "
                    "committed offset", took)


def _groups(records: list[Any], size: int) -> Iterator[list[Any]]:
    """``records`` in order, in groups of at least ``size`` value bytes (the last may be
    smaller)."""
    group: list[Any] = []
    total = 0
    for record in records:
        group.append(record)
        total += len(record.value or b"")
        if total >= size:
            yield group
            group, total = [], 0
    if group:
        yield group


def _extend(out: list[Any], decode: Callable[[list[Any]], list[Any]], group: list[Any]
            ) -> None:
    out.extend(decode(group))
