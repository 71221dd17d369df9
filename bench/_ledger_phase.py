"""The spend ledger over the throughput phase's events, next to the worker's rate.

With ``--ledger-url``, after the worker has counted the throughput phase's events, the
same topic is read again by ``spendstream ledger run`` processes (the ledger as its own
consumer: decode, price, COPY, insert, rollup, commit), 1 then 2 of them in one group,
each measurement into a scratch database of its own on that server. The rate runs from
the first row in the database to the last; then the ledger's total, count and per-feature
sums are compared with the ``Decimal`` sums of what was published.
"""

from __future__ import annotations

import os
import sys
import time
from decimal import Decimal
from pathlib import Path

import psycopg
from _phases import Phase, Run, log
from _procs import worker_env
from _report import at_least
from _traffic import Expected
from _watch import Check

LEDGER_PROCESSES = (1, 2)


def _scratch(admin: str, name: str) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return admin.rsplit("/", 1)[0] + "/" + name


def _drop(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _rows(url: str) -> int:
    """Rows in the ledger so far, from the rollup (small; 0 before the schema exists)."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT coalesce(sum(calls), 0) FROM spend_hourly").fetchone()
            return int(row[0]) if row else 0
    except psycopg.errors.UndefinedTable:
        return 0


def ledger_phase(run: Run, phase: Phase, budgets: Path, expected: Expected, n: int,
                 worker_rate: float, timeout: float = 900.0) -> None:
    """Time ``ledger run`` processes over the ``n`` events of ``phase``'s topic."""
    admin = run.args.ledger_url
    for procs in LEDGER_PROCESSES:
        name = f"ss_bench_ledger_{run.run_id}_{procs}"
        url = _scratch(admin, name)
        env = worker_env(kafka_url=run.broker.url, redis_url=phase.redis_url,
                         budgets=budgets, topic=phase.topic, prefix=phase.prefix, partitions=4,
                         app_id=f"bench-{run.run_id}-ledger{procs}",
                         state_dir=run.workdir / f"state-ledger{procs}", database_url=url)
        log(f"[ledger] {procs} `spendstream ledger run` process(es) over {n:,} events")
        children = [run.children.start(f"ledger{procs}-{i}", [
            sys.executable, "-P", "-m", "spendstream", "ledger", "run", "--log-level",
            "warning"], env) for i in range(procs)]
        try:
            deadline = time.monotonic() + timeout
            first = start = 0.0
            done = 0
            while done < n:
                for child in children:
                    child.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the ledger wrote {done:,} of {n:,} rows in "
                                       f"{timeout:.0f}s")
                time.sleep(0.2)
                done = _rows(url)
                if done and not start:
                    first, start = done, time.monotonic()
            rate = (n - first) / (time.monotonic() - start)
        finally:
            for child in children:
                run.children.stop(child)
        load = os.getloadavg()
        log(f"  ledger, {procs} process(es): {rate:,.0f} rows/s (the worker: "
            f"{worker_rate:,.0f} events/s; load average {load[0]:.2f}, {load[1]:.2f})")
        run.figures.append(at_least(
            f"ledger_rate_{procs}p", f"ledger end to end, {procs} `ledger run` process(es)",
            rate, f"{rate:,.0f} rows/s", worker_rate, "the worker's rate in this run"))
        run.checks += _checks(url, expected, procs)
        _drop(admin, name)


def _checks(url: str, expected: Expected, procs: int) -> list[Check]:
    ledger = expected.ledger
    with psycopg.connect(url) as conn:
        count, total = conn.execute("SELECT count(*), sum(cost_usd) FROM cost_logs"
                                    ).fetchone() or (0, None)
        by_feature = dict(conn.execute(
            "SELECT feature, sum(cost_usd) FROM cost_logs GROUP BY 1").fetchall())
        (rolled,) = conn.execute("SELECT sum(cost_usd) FROM spend_hourly").fetchone() or (None,)
    want = {f: s.usd for f, s in ledger.features.items()}
    got = {f: Decimal(v or 0) for f, v in by_feature.items()}
    label = f"ledger ({procs} process(es))"
    return [
        Check(f"{label}: rows", count == ledger.total.events,
              f"{count:,} rows for {ledger.total.events:,} events"),
        Check(f"{label}: total cost", total == ledger.total.usd == rolled,
              f"rows {total}, rollup {rolled}, published {ledger.total.usd}"),
        Check(f"{label}: cost per feature", got == want,
              f"{sum(1 for f in want if got.get(f) == want[f])} of {len(want)} features equal"),
    ]
