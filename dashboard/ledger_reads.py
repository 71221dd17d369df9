"""What the dashboard asks the spend ledger: sums by user, feature or model for a period,
spend per hour, and spend since a time. Hour-aligned periods read the hourly rollup
(``spend_hourly``); a period starting inside an hour reads the rows (``cost_logs``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from spendstream.ledger.queries import connect, run
from spendstream.ledger.schema import ROLLUP, VIEW

if TYPE_CHECKING:
    import psycopg

Dimension = Literal["user", "feature", "model"]
COLUMN: dict[str, str] = {"user": "user_id", "feature": "feature", "model": "model"}
T = TypeVar("T")


@dataclass(frozen=True)
class SpendRow:
    """Spend of one user, feature or model in a period."""

    key: str
    calls: int
    spend: Decimal
    unpriced: int


class LedgerReader:
    """One read-only connection, used by one query at a time and reopened after a failure.

    Each call ends its transaction, so the next one sees what the worker wrote since.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._lock = threading.Lock()

    def call(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], T]) -> T:
        """Run ``fn`` with the connection (blocking: call it from a thread)."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.url, read_only=True)
            try:
                return fn(self._conn)
            except BaseException:
                self._conn.close()
                self._conn = None
                raise
            finally:
                if self._conn is not None:
                    self._conn.rollback()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _aligned(t: datetime) -> bool:
    return t.minute == 0 and t.second == 0 and t.microsecond == 0


def spend_by(conn: psycopg.Connection[tuple[Any, ...]], by: Dimension, start: datetime,
             end: datetime, feature: str | None = None, user: str | None = None,
             top: int | None = None) -> list[SpendRow]:
    """Spend per ``by`` in ``[start, end)``, largest first (unpriced calls add nothing)."""
    col = COLUMN[by]
    if _aligned(start) and _aligned(end):
        source, time_col, calls, cost, unpriced = (
            ROLLUP, "hour", "SUM(calls)", "SUM(cost_usd)", "SUM(unpriced)")
    else:
        source, time_col, calls, cost, unpriced = (
            VIEW, "ts", "COUNT(*)", "COALESCE(SUM(cost_usd), 0)",
            "COUNT(*) FILTER (WHERE cost_usd IS NULL)")
    where = [f"{time_col} >= %(start)s", f"{time_col} < %(end)s"]
    if feature is not None:
        where.append("feature = %(feature)s")
    if user is not None:
        where.append("user_id = %(user)s")
    limit = "" if top is None else " LIMIT %(top)s"
    result = run(conn, f"SELECT {col}, {calls}, {cost} AS spend, {unpriced} FROM {source} "
                 f"WHERE {' AND '.join(where)} GROUP BY {col} ORDER BY spend DESC, {col}{limit}",
                 {"start": start, "end": end, "feature": feature, "user": user, "top": top})
    return [SpendRow(str(k), int(n), Decimal(s), int(u)) for k, n, s, u in result.rows]


def hourly(conn: psycopg.Connection[tuple[Any, ...]], by: Literal["feature", "model"],
           start: datetime, end: datetime) -> list[tuple[datetime, str, Decimal]]:
    """(hour, feature or model, spend) for every hour of ``[start, end)`` with calls."""
    col = COLUMN[by]
    result = run(conn, f"SELECT hour, {col}, SUM(cost_usd) FROM {ROLLUP} WHERE hour >= %s "
                 f"AND hour < %s GROUP BY hour, {col} ORDER BY hour, {col}", (start, end))
    return [(h, str(k), Decimal(s)) for h, k, s in result.rows]
