"""Batched, idempotent writes of ledger rows, with the hourly rollup kept in step.

One batch is one transaction: COPY the rows (binary) into a temporary table, then one statement
inserts them into ``spend_ledger`` with ``ON CONFLICT DO NOTHING ... RETURNING`` and adds
exactly the returned (new) rows to ``spend_hourly``. A replayed batch therefore inserts
nothing and adds nothing: the rollup can never count an event twice, and a batch that
fails leaves neither table touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

from spendstream.contract.ledger import COLUMNS, GRANT_COLUMNS, TYPES, GrantRow, LedgerRow
from spendstream.ledger.schema import (
    DDL,
    GRANTS,
    LOCK,
    ROLLUP,
    TABLE,
    month_start,
    partition_ddl,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("spendstream.ledger")

STAGE = "ledger_in"
_COLS = ", ".join(COLUMNS)
_SUMS = ("calls", "input_tokens", "output_tokens", "cached_input_tokens", "cost_usd",
         "unpriced", "cache_hits", "saved_usd")

INSERT = f"""
WITH new AS (
    INSERT INTO {TABLE} ({_COLS}) SELECT {_COLS} FROM {STAGE}
    ON CONFLICT DO NOTHING
    RETURNING ts, user_id, feature, model, input_tokens, output_tokens, cached_input_tokens,
              cost_usd, cache_hit, saved_usd
), rolled AS (
    INSERT INTO {ROLLUP} AS h (hour, user_id, feature, model, {", ".join(_SUMS)})
    SELECT date_trunc('hour', ts, 'UTC'), user_id, feature, model, count(*),
           sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),
           coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL),
           count(*) FILTER (WHERE cache_hit), coalesce(sum(saved_usd), 0)
    FROM new GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (hour, user_id, feature, model) DO UPDATE SET
        {", ".join(f"{c} = h.{c} + excluded.{c}" for c in _SUMS)}
)
SELECT count(*) FROM new
"""
"""Rows go in once; the rollup gets exactly the rows that went in. ``ORDER BY`` takes the
rollup's row locks in one order, so two workers' batches cannot deadlock on them."""


async def connect(url: str, timeout: float = 5.0) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    """An autocommit connection in UTC, failing within ``timeout`` seconds."""
    import psycopg

    conn = await psycopg.AsyncConnection.connect(
        url, autocommit=True, connect_timeout=max(1, int(timeout)),
        application_name="spendstream-ledger")
    await conn.execute("SET TIME ZONE 'UTC'")
    return conn


async def ensure_schema(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
    """Create the tables, rollup and view if missing (safe to run from every worker)."""
    async with conn.transaction():
        await conn.execute(LOCK)
        await conn.execute(DDL)


class LedgerWriter:
    """Writes batches of :class:`LedgerRow` on one connection (not shared between tasks)."""

    def __init__(self, conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
        self.conn = conn
        self._months: set[date] = set()
        self._staged = False

    @classmethod
    async def open(cls, url: str, timeout: float = 5.0) -> LedgerWriter:
        """Connect, create the schema if needed, and return a writer."""
        conn = await connect(url, timeout)
        try:
            await ensure_schema(conn)
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    async def write(self, rows: Sequence[LedgerRow],
                    meanwhile: Callable[[], object] | None = None) -> int:
        """Store ``rows`` once each; return how many were new (the rest were already in).

        ``meanwhile`` is called while PostgreSQL works on the insert (the statement is
        sent in pipeline mode, its result read after): the caller's next batch is decoded
        there, in parallel with the database. It is called even when ``rows`` is empty.
        On any error nothing of the batch is stored; the caller retries the same batch.
        """
        if not rows:
            if meanwhile is not None:
                meanwhile()
            return 0
        try:
            await self._partitions({month_start(d) for d in {r.date for r in rows}})
            if not self._staged:
                await self.conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} (LIKE {TABLE}) "
                    "ON COMMIT DELETE ROWS")
                self._staged = True
            async with self.conn.transaction(), self.conn.cursor() as cur:
                async with cur.copy(f"COPY {STAGE} ({_COLS}) FROM STDIN (FORMAT BINARY)"
                                    ) as copy:
                    copy.set_types(TYPES)
                    for row in rows:
                        await copy.write_row(row)
                async with self.conn.pipeline() as pipeline:
                    await cur.execute(INSERT)
                    if meanwhile is not None:
                        meanwhile()
                    await pipeline.sync()
                    result = await cur.fetchone()
        except BaseException:
            self._months.clear()  # a partition may have been pruned meanwhile
            raise
        return int(result[0]) if result else 0

    async def write_grants(self, rows: Sequence[GrantRow]) -> int:
        """Store grants once each (by user and ``grant_id``); return how many were new."""
        if not rows:
            return 0
        cols = ", ".join(GRANT_COLUMNS)
        marks = ", ".join(["%s"] * len(GRANT_COLUMNS))
        new = 0
        async with self.conn.transaction(), self.conn.cursor() as cur:
            for row in rows:
                await cur.execute(f"INSERT INTO {GRANTS} ({cols}) VALUES ({marks}) "
                                  "ON CONFLICT (user_id, grant_id) DO NOTHING", row)
                new += cur.rowcount
        return new

    async def _partitions(self, months: set[date]) -> None:
        missing = months - self._months
        if not missing:
            return
        async with self.conn.transaction():
            await self.conn.execute(LOCK)
            for month in sorted(missing):
                await self.conn.execute(partition_ddl(month))
        self._months |= missing

    async def close(self) -> None:
        """Close the connection (a transaction in flight is rolled back by the server)."""
        await self.conn.close()
