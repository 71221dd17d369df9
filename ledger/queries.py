"""The questions asked of the ledger: the four monthly queries, the report, ``sql``, prune.

The four queries are kept verbatim as people write them against ``cost_logs`` (they scan
the rows). The report answers the same questions for a period from the hourly rollup,
which has one row per (hour, user, feature, model) instead of one per call, so a month of
tens of millions of calls answers in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Any

from spendstream.errors import ConfigError, ServiceUnavailable, SpendstreamError
from spendstream.ledger.schema import GRANTS, ROLLUP, TABLE, VIEW, partition_month
from spendstream.redact import redact_url, scrub, url_password

if TYPE_CHECKING:
    import psycopg

FOUR_QUERIES: dict[str, str] = {
    "top features this month": (
        "SELECT feature, SUM(cost_usd) AS spend FROM cost_logs\n"
        "WHERE date >= date_trunc('month', NOW()) GROUP BY feature ORDER BY spend DESC;"),
    "most expensive users": (
        "SELECT user_id, COUNT(*) AS calls, SUM(cost_usd) AS spend FROM cost_logs\n"
        "GROUP BY user_id ORDER BY spend DESC LIMIT 20;"),
    "cost per user": (
        "SELECT SUM(cost_usd) / COUNT(DISTINCT user_id) AS cost_per_user FROM cost_logs;"),
    "model efficiency": (
        "SELECT model, AVG(output_tokens) AS avg_output, AVG(cost_usd) AS avg_cost "
        "FROM cost_logs GROUP BY model;"),
}
"""The issue's four questions, verbatim (``ORDER BY spend DESC`` puts NULL spend first:
PostgreSQL sorts NULLs as largest)."""


class QueryError(SpendstreamError):
    """PostgreSQL rejected a query (syntax, unknown column, a write in ``sql``...)."""


def connect(url: str | None, read_only: bool = False, timeout: float = 5.0
            ) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection to the ledger's database, in UTC; clear errors when there is none."""
    if not url:
        raise ConfigError("no ledger database: set SPENDSTREAM_DATABASE_URL to a "
                          "postgresql:// URL (`spendstream up` prints one), see docs/ledger.md")
    import psycopg

    try:
        conn = psycopg.connect(url, connect_timeout=max(1, int(timeout)),
                               application_name="spendstream-cli")
    except psycopg.Error as e:
        detail = scrub(str(e).strip().splitlines()[0] if str(e).strip() else "", url,
                       url_password(url))
        raise ServiceUnavailable(f"PostgreSQL unreachable at {redact_url(url)} ({detail}); "
                                 "check SPENDSTREAM_DATABASE_URL and that it is running"
                                 ) from e
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    conn.read_only = read_only
    return conn


def read_as_reader(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """Take the ledger's read-only role for the rest of the transaction (``spendstream
    sql``): SELECT on the ledger and nothing else, whoever connected. Without that role, a
    superuser is refused (it could read files or run programs from SQL); another user runs
    with its own rights, in a READ ONLY transaction that is always rolled back."""
    import psycopg

    from spendstream.ledger.schema import READER

    try:
        conn.execute(f"SET LOCAL ROLE {READER}")
        return
    except psycopg.Error:
        conn.rollback()
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if row is not None and row[0]:
        raise QueryError(
            f"refused: the ledger's read-only role {READER} is missing here, and "
            "SPENDSTREAM_DATABASE_URL connects as a superuser, who could read files or run "
            "programs from SQL; start the worker once with the ledger (it creates the role), "
            "or connect as a user that can only read the ledger")


@dataclass(frozen=True)
class Result:
    """Column names and rows of one query."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    types: tuple[int, ...] = ()
    """PostgreSQL type OIDs of the columns (empty when made by hand): they tell a
    ``jsonb`` column's lists from an array's when printing."""


def run(conn: psycopg.Connection[tuple[Any, ...]], query: str,
        params: Sequence[Any] | dict[str, Any] | None = None) -> Result:
    """Run one statement (the extended protocol refuses a second one) and fetch it all."""
    import psycopg

    try:
        with conn.cursor(binary=True) as cur:
            cur.execute(query, params)
            columns = [c.name for c in cur.description or []]
            types = tuple(c.type_code for c in cur.description or [])
            rows = cur.fetchall() if cur.description else []
    except psycopg.errors.ReadOnlySqlTransaction as e:
        conn.rollback()
        raise QueryError(f"refused: this runs in a READ ONLY transaction ({e.diag.message_primary}"
                         "); `spendstream sql` only reads the ledger") from e
    except psycopg.errors.InsufficientPrivilege as e:
        conn.rollback()
        raise QueryError(f"refused: {e.diag.message_primary} (`spendstream sql` may read "
                         "the ledger's tables and nothing else)") from e
    except psycopg.errors.UndefinedTable as e:
        conn.rollback()
        if ledger_exists(conn):  # a typo in the query: PostgreSQL's own words say it
            raise QueryError(e.diag.message_primary or str(e)) from e
        raise QueryError(f"{e.diag.message_primary}: no ledger in this database yet (the "
                         "worker creates it when it starts with SPENDSTREAM_DATABASE_URL)"
                         ) from e
    except psycopg.errors.SyntaxError as e:
        conn.rollback()
        hint = (" (one statement at a time)" if "multiple commands" in str(e) else "")
        raise QueryError(f"{e.diag.message_primary}{hint}") from e
    except psycopg.Error as e:
        conn.rollback()
        raise QueryError(e.diag.message_primary or str(e)) from e
    return Result(columns, rows, types)


def ledger_exists(conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
    """Whether the ledger's own tables are in this database (the worker made them)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
                       (TABLE, VIEW)).fetchone()
    conn.rollback()
    return bool(row and row[0])


@dataclass(frozen=True)
class Filters:
    """The report's period ``[start, end)`` and optional feature/user filters."""

    start: datetime
    end: datetime
    feature: str | None = None
    user: str | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        """The rollup's WHERE clause and its parameters."""
        return self._where(["hour >= %(start)s", "hour < %(end)s"])

    def _where(self, clauses: list[str]) -> tuple[str, dict[str, Any]]:
        if self.feature is not None:
            clauses.append("feature = %(feature)s")
        if self.user is not None:
            clauses.append("user_id = %(user)s")
        return " AND ".join(clauses), {"start": self.start, "end": self.end,
                                       "feature": self.feature, "user": self.user}


def hits_query(filters: Filters) -> tuple[str, dict[str, Any]]:
    """Calls answered from the response cache per feature: ``feature, cache_hits``, from
    the hourly rollup's ``cache_hits`` (whole hours: the periods asked are whole days)."""
    where, params = filters.where()
    return (f"SELECT feature, SUM(cache_hits)::bigint AS cache_hits FROM {ROLLUP} "
            f"WHERE cache_hits > 0 AND {where} GROUP BY feature"), params


def cache_hits(conn: psycopg.Connection[tuple[Any, ...]], filters: Filters) -> dict[str, int]:
    """Per feature, the calls of ``filters``' period answered from the response cache
    (features without a hit are absent); the hit rate is this over the feature's calls."""
    query, params = hits_query(filters)
    return {str(f): int(n) for f, n in run(conn, query, params).rows}


@dataclass(frozen=True)
class Report:
    """The four questions for one period, from the rollup, and the grants made in it."""

    filters: Filters
    features: Result
    users: Result
    totals: Result
    models: Result
    grants: Result
    """Grants and unblocks made in the period, per user and kind (``spendstream grant``)."""


REPORT = f"""
WITH g AS MATERIALIZED (
    SELECT GROUPING(feature, user_id, model) AS k, feature, user_id, model,
           SUM(calls) AS calls, SUM(cost_usd) AS spend, SUM(unpriced) AS unpriced,
           SUM(output_tokens) AS output_tokens, SUM(cache_hits) AS hits
    FROM {ROLLUP} WHERE {{where}}
    GROUP BY GROUPING SETS ((feature), (user_id), (model), ()))
(SELECT 'f' AS s, row_number() OVER (ORDER BY spend DESC, feature) AS i, feature AS name,
        calls::bigint, spend, unpriced::bigint, NULL::bigint AS users,
        hits::numeric / NULLIF(calls, 0) AS a, NULL::numeric AS b, hits::bigint
 FROM g WHERE k = 3 ORDER BY spend DESC, feature LIMIT %(top)s)
UNION ALL
(SELECT 'u', row_number() OVER (ORDER BY spend DESC, user_id), user_id, calls::bigint,
        spend, unpriced::bigint, NULL, NULL, NULL, NULL
 FROM g WHERE k = 5 ORDER BY spend DESC, user_id LIMIT %(top)s)
UNION ALL
(SELECT 'm', row_number() OVER (ORDER BY model), model, calls::bigint, spend,
        unpriced::bigint, NULL, output_tokens / calls, spend / NULLIF(calls - unpriced, 0),
        NULL
 FROM g WHERE k = 6)
UNION ALL
(SELECT 't', 1, NULL, calls::bigint, spend, unpriced::bigint, u.n, spend / NULLIF(u.n, 0),
        NULL, NULL
 FROM g, (SELECT count(*) AS n FROM g WHERE k = 5) u WHERE k = 7)
ORDER BY s, i
"""
"""The four sections in one pass over the period's rollup rows: one aggregate with three
grouping sets (by feature, by user, by model) and the grand total, its results kept
(``MATERIALIZED``) and cut into the sections. Four separate queries read the rollup four
times, twice as slow at 10 million calls (docs/ledger.md has the figures).
``GROUPING`` is 3 for a feature's row, 5 for a user's, 6 for a model's, 7 for the total.
A feature's ``hit_rate`` (``a``) is its response-cache hits over its calls. ``avg_cost``
(``b``) is over priced calls, like SQL's ``AVG(cost_usd)``, which skips
NULLs: the rollup's priced calls are ``calls - unpriced``."""


def report(conn: psycopg.Connection[tuple[Any, ...]], filters: Filters, top: int = 20
           ) -> Report:
    """Top features (with their response-cache hits and hit rate), top users, cost per
    user and model efficiency for ``filters``."""
    where, params = filters.where()
    rows = run(conn, REPORT.replace("{where}", where), {**params, "top": top}).rows
    by: dict[str, list[tuple[Any, ...]]] = {"f": [], "u": [], "m": [], "t": []}
    for section, _, name, calls, spend, unpriced, users, a, b, hits in rows:
        by[section].append((name, calls, spend, unpriced, users, a, b, hits))
    return Report(
        filters,
        Result(["feature", "calls", "spend", "unpriced", "cache_hits", "hit_rate"],
               [(f, c, s, n, h, a) for f, c, s, n, _, a, _, h in by["f"]]),
        Result(["user_id", "calls", "spend", "unpriced"], [r[:4] for r in by["u"]]),
        Result(["calls", "spend", "users", "cost_per_user", "unpriced"],
               [(c, s, u, a, n) for _, c, s, n, u, a, _, _ in by["t"]]),
        Result(["model", "calls", "avg_output", "avg_cost", "unpriced"],
               [(m, c, a, b, n) for m, c, _, n, _, a, b, _ in by["m"]]),
        run(conn, "SELECT user_id, kind, COUNT(*) AS grants, SUM(usd) AS usd, "
            f"SUM(tokens)::bigint AS tokens FROM {GRANTS} WHERE ts >= %(start)s "
            "AND ts < %(end)s AND (%(user)s::text IS NULL OR user_id = %(user)s) "
            "GROUP BY user_id, kind ORDER BY user_id, kind", params),
    )


def partitions(conn: psycopg.Connection[tuple[Any, ...]]) -> list[tuple[str, date]]:
    """The ledger's monthly partitions as (name, first day of the month), oldest first."""
    rows = run(conn, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = "
               "i.inhrelid WHERE i.inhparent = %s::regclass", (TABLE,)).rows
    found = [(name, partition_month(name)) for (name,) in rows]
    return sorted(((n, m) for n, m in found if m is not None), key=lambda p: p[1])


def prune(conn: psycopg.Connection[tuple[Any, ...]], before: date) -> list[str]:
    """Drop every monthly partition that ends on or before ``before`` (whole months only)
    and the rollup's hours of those months, in one transaction; return the names."""
    from spendstream.ledger.schema import LOCK, next_month

    dropped = [(name, month) for name, month in partitions(conn) if next_month(month) <= before]
    if not dropped:
        return []
    end = datetime.combine(next_month(dropped[-1][1]), time(), tzinfo=UTC)
    try:
        conn.execute(LOCK)
        for name, _ in dropped:
            conn.execute(f'DROP TABLE IF EXISTS "{name}"')
        conn.execute(f"DELETE FROM {ROLLUP} WHERE hour < %s", (end,))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return [name for name, _ in dropped]
