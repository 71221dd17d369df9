"""What the dashboard asks the spend ledger: sums by user, feature or model for a period,
and spend per hour. Whole hours are read from the hourly rollup (``spend_hourly``), the
part-hours at the ends of a period from the rows (``cost_logs``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
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


def _floor(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _ceil(t: datetime) -> datetime:
    return t if _floor(t) == t else _floor(t) + timedelta(hours=1)


def spend_by(conn: psycopg.Connection[tuple[Any, ...]], by: Dimension, start: datetime,
             end: datetime, feature: str | None = None, user: str | None = None,
             top: int | None = None) -> list[SpendRow]:
    """Spend per ``by`` in ``[start, end)``, largest first (unpriced calls add nothing).

    Whole hours come from the rollup; the part-hours at either end from the rows.
    """
    col = COLUMN[by]
    extra = "".join(f" AND {c} = %({n})s" for c, n, v in (
        ("feature", "feature", feature), ("user_id", "user", user)) if v is not None)
    limit = "" if top is None else " LIMIT %(top)s"
    query = f"""
        SELECT key, SUM(calls), SUM(cost) AS spend, SUM(unpriced) FROM (
            SELECT {col} AS key, calls, cost_usd AS cost, unpriced FROM {ROLLUP}
            WHERE hour >= %(inner_start)s AND hour < %(inner_end)s{extra}
            UNION ALL
            SELECT {col}, 1, COALESCE(cost_usd, 0), (cost_usd IS NULL)::int FROM {VIEW}
            WHERE ((ts >= %(start)s AND ts < %(head_end)s)
                   OR (ts >= %(tail_start)s AND ts < %(end)s)){extra}
        ) parts GROUP BY key ORDER BY spend DESC, key{limit}"""
    inner_start, inner_end = _ceil(start), _floor(end)
    result = run(conn, query, {
        "start": start, "end": end, "inner_start": inner_start, "inner_end": inner_end,
        "head_end": min(inner_start, end), "tail_start": max(inner_end, inner_start),
        "feature": feature, "user": user, "top": top})
    return [SpendRow(str(k), int(n), Decimal(s), int(u)) for k, n, s, u in result.rows]


def hourly(conn: psycopg.Connection[tuple[Any, ...]], by: Literal["feature", "model"],
           start: datetime, end: datetime) -> list[tuple[datetime, str, Decimal]]:
    """(hour, feature or model, spend) for every hour of ``[start, end)`` with calls."""
    col = COLUMN[by]
    result = run(conn, f"SELECT hour, {col}, SUM(cost_usd) FROM {ROLLUP} WHERE hour >= %s "
                 f"AND hour < %s GROUP BY hour, {col} ORDER BY hour, {col}", (start, end))
    return [(h, str(k), Decimal(s)) for h, k, s in result.rows]
