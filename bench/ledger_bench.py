"""The spend ledger's benchmark: how fast it writes, and how fast the questions answer.

    python bench/ledger_bench.py [--events N] [--rows N] [--database-url URL] [--quick]

Uses a scratch database ``ss_ledger_bench`` (dropped and made again) on
``--database-url``'s server: by default the machine's PostgreSQL at 127.0.0.1:5432 when it
answers, else PostgreSQL from the pgserver wheel. Three parts:

* **writer**: ``--events`` ledger rows built in memory, written by :class:`LedgerWriter`
  in batches of 2,000 (COPY to a temp table, one INSERT ... ON CONFLICT ... RETURNING
  feeding the hourly rollup, one transaction each): rows/s of the database side alone;
* **consumer, end to end**: the same number of events published to the embedded broker
  (Tansu) as the SDK publishes them (packed records of 500), then read by a
  :class:`LedgerConsumer` alone, from start to the moment every row is in: rows/s of the
  ledger as it runs in the worker (decode, price, write, commit). Compare it with the
  worker's events/s from ``bench/throughput.py``;
* **queries at ``--rows``** (10 million by default): rows generated with
  ``generate_series`` straight into ``spend_ledger`` (this month and last, 10,000 users,
  20 features, 8 models, 1% unpriced, 2% failed), the rollup filled from them, then each
  of the issue's four queries run verbatim on ``cost_logs`` and the report's rollup
  queries for this month, best of 3, timed from the client.

Prints the figures; no targets are asserted here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from spendstream.contract.event import UsageEvent
from spendstream.contract.ledger import ledger_row
from spendstream.domain.budgets import Budgets, parse_budgets
from spendstream.domain.pricing import Pricer
from spendstream.ledger.queries import FOUR_QUERIES, Filters
from spendstream.ledger.report import parse_period
from spendstream.ledger.schema import DDL, ROLLUP, TABLE, partition_ddl
from spendstream.ledger.writer import LedgerWriter

SCRATCH = "ss_ledger_bench"
MACHINE = "postgresql://postgres@127.0.0.1:5432/postgres"
BUDGETS = "users:\n  tiers: {free: {usd: 1}}\nprices:\n  house-model: {input: 1, output: 2}\n"
MODELS = [("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("house-model", None),
          ("claude-sonnet-4-5", "anthropic")]


def budgets() -> Budgets:
    import yaml

    return parse_budgets(yaml.safe_load(BUDGETS))


def scratch(admin: str) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {SCRATCH}")
    return admin.rsplit("/", 1)[0] + "/" + SCRATCH


def events(n: int) -> list[dict[str, Any]]:
    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out = []
    for i in range(n):
        model, provider = MODELS[i % len(MODELS)]
        e: dict[str, Any] = {"schema": 1, "event_id": uuid.uuid4().hex, "ts": ts,
                             "user_id": f"acct-{i * 7919 % 100_000}",
                             "feature": f"feature-{i % 30}", "model": model,
                             "input_tokens": 800 + i % 400, "output_tokens": 100 + i % 300,
                             "status": "ok" if i % 50 else "error"}
        if provider:
            e["provider"] = provider
        if i % 2:
            e["cost_usd"] = "0.00123"
        out.append(e)
    return out


async def bench_writer(url: str, evs: list[dict[str, Any]], pricer: Pricer,
                       sync_off: bool = False) -> float:
    rows = [ledger_row(UsageEvent.model_validate(e), pricer, "free") for e in evs]
    writer = await LedgerWriter.open(url)
    if sync_off:  # what synchronous_commit = off would buy (the ledger keeps it on)
        await writer.conn.execute("SET synchronous_commit = off")
    try:
        start = time.perf_counter()
        for i in range(0, len(rows), 2000):
            await writer.write(rows[i:i + 2000])
        took = time.perf_counter() - start
    finally:
        await writer.close()
    return len(rows) / took


async def bench_consumer(url: str, evs: list[dict[str, Any]]) -> tuple[float, float]:
    from aiokafka import AIOKafkaProducer

    from spendstream.embedded import EmbeddedBroker
    from spendstream.ledger.consumer import LedgerConsumer
    from spendstream.streams.topics import ensure_topics

    broker = EmbeddedBroker()
    broker.start()
    try:
        topic = f"bench{uuid.uuid4().hex[:6]}.usage"
        await ensure_topics(broker.bootstrap, [topic], 4)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap,
                                    max_request_size=4 * 1024 * 1024, linger_ms=5)
        await producer.start()
        consumer = LedgerConsumer(url, broker.bootstrap, topic, f"{topic}.ledger", budgets())
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        # One warm-up event: the group is joined and the schema made before the clock runs.
        await producer.send_and_wait(topic, orjson.dumps(events(1)[0]), key=b"warm-up")
        while consumer.stats.rows == 0:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        start = time.perf_counter()
        futures = []
        for i in range(0, len(evs), 500):
            futures.append(await producer.send(topic, orjson.dumps(evs[i:i + 500]),
                                               partition=(i // 500) % 4))
        await asyncio.gather(*futures)
        publish = len(evs) / (time.perf_counter() - start)
        await producer.stop()
        while consumer.stats.rows < len(evs) + 1:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        took = time.perf_counter() - start
        stop.set()
        await task
        return publish, len(evs) / took
    finally:
        broker.stop()


GENERATE = f"""
INSERT INTO {TABLE} (event_id, ts, date, user_id, feature, model, provider, input_tokens,
                     output_tokens, cached_input_tokens, status, finish_reason, tier,
                     estimated, cache_hit, cost_usd, price_source, saved_usd)
SELECT 'e' || g, t, (t AT TIME ZONE 'UTC')::date, 'acct-' || (b * 7919 %% %(users)s),
       'feature-' || (b %% 20), 'model-' || (b / 20 %% 8), 'openai', 500 + g %% 1500,
       50 + g %% 700, (g %% 3) * 100, CASE WHEN g %% 50 = 0 THEN 'error' ELSE 'ok' END,
       'stop', 'free', false, g %% 20 = 3,
       CASE WHEN g %% 100 = 1 THEN NULL WHEN g %% 50 = 0 OR g %% 20 = 3 THEN 0
            ELSE round((500 + g %% 1500) * 0.0000025 + (50 + g %% 700) * 0.00001, 8) END,
       CASE WHEN g %% 100 = 1 THEN 'unpriced' WHEN g %% 50 = 0 THEN 'failed'
            WHEN g %% 20 = 3 THEN 'event' ELSE 'table' END,
       CASE WHEN g %% 20 = 3
            THEN round((500 + g %% 1500) * 0.0000025 + (50 + g %% 700) * 0.00001, 8) END
FROM (SELECT g, g / %(burst)s AS b,
             %(start)s::timestamptz + (g * %(span)s / %(rows)s) * interval '1 second' AS t
      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g) s
"""
"""Calls come in bursts of ``burst`` consecutive calls by one user on one feature and
model (a session), spread evenly from the start of last month to now; 1% unpriced, 2%
failed, 5% response-cache hits (cost 0, ``saved_usd`` what the call would have cost)."""

FILL_ROLLUP = f"""
INSERT INTO {ROLLUP} (hour, user_id, feature, model, calls, input_tokens, output_tokens,
                      cached_input_tokens, cost_usd, unpriced, cache_hits, saved_usd)
SELECT date_trunc('hour', ts, 'UTC'), user_id, feature, model, count(*),
    sum(input_tokens), sum(output_tokens), sum(cached_input_tokens), coalesce(sum(cost_usd), 0),
    count(*) FILTER (WHERE cost_usd IS NULL), count(*) FILTER (WHERE cache_hit),
    coalesce(sum(saved_usd), 0)
FROM {TABLE} GROUP BY 1, 2, 3, 4
"""


def generate(url: str, rows: int, users: int, burst: int) -> tuple[float, float]:
    now = datetime.now(UTC)
    first = datetime(now.year, now.month, 1, tzinfo=UTC)
    last_month = (first - timedelta(days=1)).replace(day=1)
    span = int((now - last_month).total_seconds())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(DDL)
        conn.execute(partition_ddl(last_month.date()))
        conn.execute(partition_ddl(now.date()))
        t = time.perf_counter()
        step = 1_000_000
        for lo in range(0, rows, step):
            conn.execute(GENERATE, {"start": last_month, "span": span, "lo": lo,
                                    "hi": min(lo + step, rows) - 1, "rows": rows,
                                    "users": users, "burst": burst})
        gen = time.perf_counter() - t
        t = time.perf_counter()
        conn.execute(FILL_ROLLUP)
        conn.execute(f"VACUUM ANALYZE {TABLE}")
        conn.execute(f"VACUUM ANALYZE {ROLLUP}")
        roll = time.perf_counter() - t
    return gen, roll


def best_of(conn: psycopg.Connection[Any], sql: str, params: Any = None, n: int = 3
            ) -> tuple[float, int]:
    best = float("inf")
    count = 0
    for _ in range(n):
        t = time.perf_counter()
        count = len(conn.execute(sql, params).fetchall())
        best = min(best, time.perf_counter() - t)
    return best, count


def bench_queries(url: str) -> list[tuple[str, float, int]]:
    from spendstream.ledger import queries

    out = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        for name, sql in FOUR_QUERIES.items():
            took, n = best_of(conn, sql)
            out.append((f"cost_logs verbatim: {name}", took, n))
        start, end = parse_period("month", datetime.now(UTC))
        with queries.connect(url) as qconn:
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                queries.report(qconn, Filters(start, end))
                best = min(best, time.perf_counter() - t)
            out.append(("report (rollup, this month, all four sections)", best, 4))
        where = "hour >= %(s)s AND hour < %(e)s"
        p = {"s": start, "e": end}
        for name, sql in {
            "top features this month": f"SELECT feature, SUM(cost_usd) AS spend FROM {ROLLUP}"
                f" WHERE {where} GROUP BY feature ORDER BY spend DESC",
            "most expensive users": f"SELECT user_id, SUM(calls), SUM(cost_usd) AS spend FROM "
                f"{ROLLUP} WHERE {where} GROUP BY user_id ORDER BY spend DESC LIMIT 20",
            "cost per user": "SELECT SUM(spend) / COUNT(*) FROM (SELECT SUM(cost_usd) AS "
                f"spend FROM {ROLLUP} WHERE {where} GROUP BY user_id) u",
            "model efficiency": f"SELECT model, SUM(output_tokens) / SUM(calls), SUM(cost_usd)"
                f" / NULLIF(SUM(calls) - SUM(unpriced), 0) FROM {ROLLUP} WHERE {where} "
                "GROUP BY model",
        }.items():
            took, n = best_of(conn, sql, p)
            out.append((f"rollup, this month: {name}", took, n))
    return out


def _load() -> str:
    """The machine's load average, printed next to every figure (the VM is shared)."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=5_000, help="distinct users in --rows")
    p.add_argument("--burst", type=int, default=20,
                   help="consecutive calls of one user, feature and model (a session)")
    p.add_argument("--database-url", help="an admin URL of the server to bench on")
    p.add_argument("--quick", action="store_true", help="20k events, 200k rows")
    p.add_argument("--skip", choices=["write", "queries"], action="append", default=[])
    p.add_argument("--sync-off", action="store_true",
                   help="time the writer with synchronous_commit off as well")
    p.add_argument("--reuse", action="store_true",
                   help="time the queries on the scratch database of the last run")
    args = p.parse_args()
    if args.quick:
        args.events, args.rows = 20_000, 200_000
    pg = None
    admin = args.database_url
    if admin is None:
        try:
            psycopg.connect(MACHINE, connect_timeout=2).close()
            admin = MACHINE
        except psycopg.OperationalError:
            from spendstream.embedded import EmbeddedPostgres

            pg = EmbeddedPostgres()
            pg.start()
            admin = pg.url
    try:
        with psycopg.connect(admin) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {version[0] if version else '?'} at {admin.rsplit('@', 1)[-1]}")
        if "write" not in args.skip:
            evs = events(args.events)
            url = scratch(admin)
            pricer = Pricer(budgets().prices)
            rate = asyncio.run(bench_writer(url, evs, pricer))
            print(f"writer: {len(evs):,} rows in batches of 2,000: {rate:,.0f} rows/s "
                  f"({_load()})")
            if args.sync_off:
                url = scratch(admin)
                rate = asyncio.run(bench_writer(url, evs, pricer, sync_off=True))
                print(f"writer, synchronous_commit off: {rate:,.0f} rows/s ({_load()})")
            url = scratch(admin)
            publish, ledger = asyncio.run(bench_consumer(url, evs))
            print(f"consumer end to end (Tansu, packed records of 500): {ledger:,.0f} rows/s "
                  f"(published at {publish:,.0f} events/s; {_load()})")
        if "queries" not in args.skip:
            if args.reuse:
                url = admin.rsplit("/", 1)[0] + "/" + SCRATCH
                gen = roll = 0.0
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(DDL)  # what a newer version adds (idempotent)
            else:
                url = scratch(admin)
                gen, roll = generate(url, args.rows, args.users, args.burst)
            with psycopg.connect(url) as conn:
                n, hourly = conn.execute(
                    f"SELECT (SELECT count(*) FROM {TABLE}), (SELECT count(*) FROM {ROLLUP})"
                ).fetchone() or (0, 0)
                size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))"
                                    ).fetchone()
            print(f"generated {n:,} rows in {gen:.0f}s, rollup of {hourly:,} rows in {roll:.0f}s;"
                  f" database {size[0] if size else '?'}")
            for name, took, count in bench_queries(url):
                print(f"  {took * 1000:9.1f} ms  {name} ({count} rows; {_load()})")
        return 0
    finally:
        if pg is not None:
            pg.remove()


if __name__ == "__main__":
    raise SystemExit(main())

