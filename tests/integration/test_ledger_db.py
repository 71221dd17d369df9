"""The ledger's writer, queries and CLI against a real PostgreSQL (one database per test).

No broker here: rows are written by :class:`LedgerWriter` directly; the worker path is
``test_ledger_worker.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal

import psycopg
import pytest

from spendstream.contract.event import UsageEvent
from spendstream.contract.ledger import LedgerRow, ledger_row
from spendstream.domain.budgets import Price
from spendstream.domain.pricing import Pricer
from spendstream.ledger.queries import FOUR_QUERIES
from spendstream.ledger.writer import LedgerWriter
from tests.pg import create_database, drop_database

pytestmark = [pytest.mark.integration]

PRICER = Pricer({"m": Price(input=Decimal("1"), output=Decimal("2"))})


def rows_at(ts: str, n: int, user: str = "u1", feature: str = "chat", **kw: object
            ) -> list[LedgerRow]:
    return [ledger_row(UsageEvent.model_validate(
        {"user_id": user, "feature": feature, "model": "m", "input_tokens": 1000 + i,
         "output_tokens": 10 * i, "ts": ts, **kw}), PRICER, "free") for i in range(n)]


def write(url: str, *batches: list[LedgerRow]) -> list[int]:
    async def go() -> list[int]:
        writer = await LedgerWriter.open(url)
        try:
            return [await writer.write(b) for b in batches]
        finally:
            await writer.close()
    return asyncio.run(go())


def one(url: str, sql: str) -> tuple[object, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row


def cli(url: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SPENDSTREAM_DATABASE_URL"}
    if url is not None:
        env["SPENDSTREAM_DATABASE_URL"] = url
    return subprocess.run([sys.executable, "-m", "spendstream", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_replayed_batches_add_nothing_to_rows_or_rollup(database_url):
    batch = rows_at("2026-11-23T10:15:00Z", 50)
    assert write(database_url, batch + batch[:5], batch, batch[10:20]) == [50, 0, 0]
    assert one(database_url, "SELECT count(*), sum(cost_usd) FROM cost_logs") == (
        50, sum((r.cost_usd for r in batch), Decimal(0)))
    assert one(database_url, "SELECT sum(calls), sum(cost_usd), sum(output_tokens) FROM "
               "spend_hourly") == (50, sum((r.cost_usd for r in batch), Decimal(0)),
                                   sum(r.output_tokens for r in batch))


def test_months_get_partitions_and_prune_drops_whole_months(database_url):
    write(database_url, rows_at("2026-09-30T23:59:59Z", 3) + rows_at("2026-10-01T00:00:00Z", 4)
          + rows_at("2026-11-15T12:00:00Z", 5, user="u2"))
    with psycopg.connect(database_url) as conn:
        parts = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'spend_ledger'::regclass ORDER BY 1").fetchall()]
    assert parts == ["spend_ledger_y2026m09", "spend_ledger_y2026m10", "spend_ledger_y2026m11"]

    dry = cli(database_url, "ledger", "prune", "--before", "2026-11-10", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would drop 2 partition(s)" in dry.stdout
    assert one(database_url, "SELECT count(*) FROM cost_logs") == (12,)

    done = cli(database_url, "ledger", "prune", "--before", "2026-11-10")
    assert done.returncode == 0, done.stderr
    assert ("dropped 2 partition(s) and their hourly rollup: spend_ledger_y2026m09, "
            "spend_ledger_y2026m10") in done.stdout
    assert "kept: spend_ledger_y2026m11" in done.stdout  # November is not over on the 10th
    assert one(database_url, "SELECT count(*), min(date) FROM cost_logs") == (
        5, date(2026, 11, 15))
    assert one(database_url, "SELECT sum(calls), min(hour) FROM spend_hourly") == (
        5, datetime(2026, 11, 15, 12, tzinfo=UTC))
    again = cli(database_url, "ledger", "prune", "--before", "2026-11-10")
    assert "nothing to drop" in again.stdout
    # A writer that had the pruned month in its cache recreates it on demand.
    assert write(database_url, rows_at("2026-10-02T00:00:00Z", 2, user="u3")) == [2]


def test_sql_reads_and_refuses_writes(database_url):
    write(database_url, rows_at("2026-11-23T10:00:00Z", 3))
    ok = cli(database_url, "sql", "SELECT user_id, count(*) AS calls, sum(cost_usd) AS spend "
             "FROM cost_logs GROUP BY 1", "--format", "csv")
    assert ok.returncode == 0, ok.stderr
    # 3003 input tokens at $1 and 30 output tokens at $2 per million
    assert ok.stdout.splitlines() == ["user_id,calls,spend", "u1,3,0.003063"]
    for write_sql in ("DELETE FROM spend_ledger", "DROP VIEW cost_logs",
                      "UPDATE spend_hourly SET calls = 0"):
        refused = cli(database_url, "sql", write_sql)
        assert refused.returncode == 2
        assert "refused: this runs in a READ ONLY transaction" in refused.stderr, refused.stderr
    two = cli(database_url, "sql", "SELECT 1; DELETE FROM spend_ledger")
    assert two.returncode == 2 and "one statement at a time" in two.stderr
    assert one(database_url, "SELECT count(*), sum(calls) FROM cost_logs, "
               "(SELECT sum(calls) AS calls FROM spend_hourly) h") == (3, 9)
    typo = cli(database_url, "sql", "SELECT nope FROM cost_logs")
    assert typo.returncode == 2 and 'column "nope" does not exist' in typo.stderr


def test_a_missing_table_is_postgresqls_message_unless_the_ledger_is_missing(
        database_url, pg_admin_url, uid):
    write(database_url, rows_at("2026-11-23T10:00:00Z", 1))  # also makes the reader role
    typo = cli(database_url, "sql", "SELECT * FROM nosuch")
    assert typo.returncode == 2
    assert typo.stderr.strip() == 'spendstream: error: relation "nosuch" does not exist'
    name = f"ss_empty_{uid}"
    try:
        empty = cli(create_database(pg_admin_url, name), "sql", "SELECT * FROM cost_logs")
    finally:
        drop_database(pg_admin_url, name)
    assert empty.returncode == 2
    assert empty.stderr.strip() == (
        'spendstream: error: relation "cost_logs" does not exist: no ledger in this database '
        "yet (the worker creates it when it starts with SPENDSTREAM_DATABASE_URL)")


def test_sql_prints_postgresql_values_not_python_reprs(database_url):
    write(database_url, rows_at("2026-11-23T10:00:00Z", 1))
    query = ("SELECT '{\"a\":1}'::jsonb d, ARRAY[1,2] e, 'x'::bytea f, interval '1 day' g, "
             "true h")
    csv = cli(database_url, "sql", query, "--format", "csv")
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout.splitlines() == ["d,e,f,g,h", '"{""a"": 1}","{1,2}",\\x78,1 day,true']
    out = cli(database_url, "sql", query, "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"d": {"a": 1}, "e": [1, 2], "f": "\\x78",
                                       "g": "1 day", "h": True}]


def test_sql_cannot_reach_files_programs_or_keep_anything(database_url, tmp_path):
    # The machine's PostgreSQL lets its `postgres` superuser do all of this in a READ ONLY
    # transaction; `spendstream sql` runs as the ledger's read-only role and rolls back.
    write(database_url, rows_at("2026-11-23T10:00:00Z", 1))
    marker = tmp_path / "ran"
    for query in (f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'",
                  "SELECT length(pg_read_file('/etc/passwd'))",
                  "SELECT pg_ls_dir('.')"):
        out = cli(database_url, "sql", query)
        assert out.returncode == 2 and "refused" in out.stderr, (query, out.stdout, out.stderr)
    assert not marker.exists()
    before = one(database_url, "SELECT count(*) FROM pg_largeobject_metadata")[0]
    made = cli(database_url, "sql", "SELECT lo_from_bytea(0, 'x') > 0 AS made")
    assert made.returncode == 0, made.stderr  # allowed, but not kept
    assert one(database_url, "SELECT count(*) FROM pg_largeobject_metadata")[0] == before
    grants = cli(database_url, "sql", "SELECT count(*) AS n FROM grants", "--format", "csv")
    assert grants.returncode == 0 and grants.stdout.splitlines() == ["n", "0"], grants.stderr


def test_commands_without_a_database_say_how_to_get_one():
    for args in (["report"], ["sql", "SELECT 1"], ["ledger", "prune", "--before", "2026-01-01"],
                 ["ledger", "run"]):
        out = cli(None, *args)
        assert out.returncode == 2
        assert "set SPENDSTREAM_DATABASE_URL to a postgresql:// URL" in out.stderr, out.stderr
    down = cli("postgresql://postgres:hunter2pw@127.0.0.1:1/x", "report")
    assert down.returncode == 2 and "PostgreSQL unreachable at" in down.stderr
    assert "hunter2pw" not in down.stderr


def test_report_from_the_rollup_equals_the_verbatim_queries(database_url):
    now = datetime.now(UTC)
    ts = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    write(database_url, rows_at(ts, 7, user="u1") + rows_at(ts, 3, user="u2", feature="search")
          + rows_at(ts, 2, user="u3", model="unknown-zz") + rows_at(ts, 2, user="u2",
                                                                     status="error"))
    out = cli(database_url, "report", "--format", "json")
    assert out.returncode == 0, out.stderr
    import orjson

    report = orjson.loads(out.stdout)
    with psycopg.connect(database_url) as conn:
        q = list(FOUR_QUERIES.values())
        features = {f: s for f, s in conn.execute(q[0]).fetchall()}
        users = {u: (n, s) for u, n, s in conn.execute(q[1]).fetchall()}
        (per_user,) = conn.execute(q[2]).fetchone()
        models = {m: (o, c) for m, o, c in conn.execute(q[3]).fetchall()}
    assert {r["feature"]: Decimal(r["spend"]) for r in report["top_features"]} == features
    assert {r["user_id"]: (int(r["calls"]), None if r["spend"] is None else Decimal(r["spend"]))
            for r in report["top_users"]} == {u: (n, s if s is not None else Decimal(0))
                                              for u, (n, s) in users.items()}
    assert Decimal(report["cost_per_user"][0]["cost_per_user"]) == round(per_user, 8)
    got = {r["model"]: (Decimal(r["avg_output"]),
                        None if r["avg_cost"] is None else Decimal(r["avg_cost"]))
           for r in report["model_efficiency"]}
    assert got == {m: (round(o, 1).normalize(), None if c is None else round(c, 8).normalize())
                   for m, (o, c) in models.items()}
    assert report["model_efficiency"][1]["unpriced"] == 2  # unknown-zz: counted, unpriced


def test_cache_hits_store_what_they_saved_in_rows_and_rollup(database_url):
    ts = "2026-11-23T10:15:00Z"
    hits = rows_at(ts, 3, input_tokens=0, output_tokens=0, cost_usd="0", cache_hit=True,
                   saved_usd="0.0125")
    unknown = rows_at(ts, 1, input_tokens=0, output_tokens=0, cost_usd="0", cache_hit=True)
    assert write(database_url, hits + unknown + rows_at(ts, 2), hits) == [6, 0]
    assert one(database_url, "SELECT count(*) FILTER (WHERE cache_hit), sum(saved_usd), "
               "count(saved_usd) FROM cost_logs") == (4, Decimal("0.0375"), 3)
    # The rollup counts every hit (the replayed batch added nothing) and sums the known
    # savings; a hit whose saving the event did not carry adds 0 there and NULL in the row.
    assert one(database_url, "SELECT sum(calls), sum(cache_hits), sum(saved_usd) FROM "
               "spend_hourly") == (6, 4, Decimal("0.0375"))


OLD_DDL = """
CREATE TABLE spend_ledger (
    event_id text NOT NULL, ts timestamptz NOT NULL, date date NOT NULL,
    user_id text NOT NULL, feature text NOT NULL, model text NOT NULL, provider text,
    input_tokens bigint NOT NULL, output_tokens bigint NOT NULL,
    cached_input_tokens bigint NOT NULL, cache_write_input_tokens bigint NOT NULL DEFAULT 0,
    status text NOT NULL, finish_reason text, tier text,
    estimated boolean NOT NULL DEFAULT false, cache_hit boolean NOT NULL DEFAULT false,
    cost_usd numeric, price_source text NOT NULL,
    PRIMARY KEY (user_id, event_id, date)) PARTITION BY RANGE (date);
CREATE TABLE spend_ledger_y2026m11 PARTITION OF spend_ledger
    FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
CREATE TABLE spend_hourly (
    hour timestamptz NOT NULL, user_id text NOT NULL, feature text NOT NULL,
    model text NOT NULL, calls bigint NOT NULL, input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL, cached_input_tokens bigint NOT NULL,
    cost_usd numeric NOT NULL, unpriced bigint NOT NULL,
    PRIMARY KEY (hour, user_id, feature, model));
CREATE VIEW cost_logs AS
SELECT event_id, ts, date, user_id, feature, model, provider, input_tokens, output_tokens,
       cached_input_tokens, cache_write_input_tokens, status, finish_reason, tier,
       estimated, cache_hit, cost_usd, price_source
FROM spend_ledger;
INSERT INTO spend_ledger VALUES ('old', '2026-11-02T00:00:00Z', '2026-11-02', 'u9', 'chat',
    'm', NULL, 10, 1, 0, 0, 'ok', NULL, 'free', false, false, 0.5, 'event'),
    ('old-hit', '2026-11-02T00:10:00Z', '2026-11-02', 'u9', 'chat', 'm', NULL, 0, 0, 0, 0,
     'ok', NULL, 'free', false, true, 0, 'event');
INSERT INTO spend_hourly VALUES ('2026-11-02T00:00:00Z', 'u9', 'chat', 'm', 2, 10, 1, 0,
    0.5, 0);
"""
"""The ledger as its first version made it, before ``saved_usd`` and ``cache_hits``."""


def test_a_ledger_made_before_saved_usd_gets_the_columns_at_start(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(OLD_DDL)
    hit = rows_at("2026-11-23T10:15:00Z", 1, input_tokens=0, output_tokens=0, cost_usd="0",
                  cache_hit=True, saved_usd="0.25")
    assert write(database_url, hit) == [1]
    assert one(database_url, "SELECT count(*), sum(cost_usd), sum(saved_usd) FROM cost_logs"
               ) == (3, Decimal("0.5"), Decimal("0.25"))
    # The old hit is counted in the rollup when the column is added; the new one with it.
    assert one(database_url, "SELECT sum(calls), sum(cache_hits), sum(saved_usd) FROM "
               "spend_hourly") == (3, 2, Decimal("0.25"))
    # A second start finds the columns there and changes nothing.
    assert write(database_url, hit) == [0]


def test_report_shows_each_features_cache_hits_and_hit_rate(database_url):
    """Hits are counted on the rows of the period only, per feature, and narrowed by
    ``--user`` like every section."""
    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    hit = {"input_tokens": 0, "output_tokens": 0, "cache_hit": True}
    write(database_url, rows_at(ts, 6, feature="faq") + rows_at(ts, 2, feature="faq", **hit)
          + rows_at(ts, 1, user="u2", feature="faq", **hit) + rows_at(ts, 3, feature="chat")
          + rows_at("2020-01-15T10:00:00Z", 4, feature="faq", **hit))  # not this month
    import orjson

    out = cli(database_url, "report", "--format", "json")
    assert out.returncode == 0, out.stderr
    got = {r["feature"]: (r["calls"], r["cache_hits"], r["hit_rate"])
           for r in orjson.loads(out.stdout)["top_features"]}
    assert got == {"faq": (9, 3, "0.3333"), "chat": (3, 0, "0")}
    mine = orjson.loads(cli(database_url, "report", "--user", "u1", "--format", "json").stdout)
    assert [(r["calls"], r["cache_hits"]) for r in mine["top_features"]
            if r["feature"] == "faq"] == [(8, 2)]
    table = cli(database_url, "report").stdout
    assert "feature  calls  spend" in table and "cache_hits  hit_rate" in table


def test_a_row_postgresql_cannot_hold_is_skipped_and_the_rest_are_written(database_url):
    """One row PostgreSQL refuses as data (here a NUL in text, which ``ledger_row``
    replaces; the ledger must not hang on whatever a check misses next): the consumer
    finds it by halving the batch and skips it; before, the batch was retried for ever."""
    from spendstream.domain.budgets import parse_budgets
    from spendstream.ledger.consumer import LedgerConsumer

    rows: list = rows_at("2026-11-23T10:15:00Z", 9)
    rows.insert(4, rows[4]._replace(event_id="bad", provider="a\x00b"))
    consumer = LedgerConsumer(database_url, "127.0.0.1:9", "t", "g", parse_budgets({}))
    calls = []

    async def go() -> int:
        consumer._writer = await LedgerWriter.open(database_url)
        try:
            return await consumer._write_rows(rows, lambda: calls.append(1))
        finally:
            await consumer._writer.close()

    assert asyncio.run(go()) == 9
    assert consumer.stats.refused == 1 and calls == [1]  # the next group decoded once
    assert one(database_url, "SELECT count(*) FROM cost_logs WHERE event_id = 'bad'") == (0,)
    assert one(database_url, "SELECT count(*) FROM cost_logs") == (9,)
