"""PostgreSQL stops under a running worker with the ledger on, then comes back.

While it is down, events that cross a user's budget still write the cutoff flag and the
exact live spend to Redis (the ledger never delays enforcement); the worker says once that
the ledger's database is unavailable. Once PostgreSQL is back the ledger catches up from
its own committed offset: every event once, nothing lost, nothing doubled, the rollup in
step with the rows.
"""

from __future__ import annotations

import re
import urllib.request
from decimal import Decimal

import psycopg
import pytest

from spendstream.embedded import free_port
from tests.fault.faultkit import Ledger, Stack, message, usage
from tests.helpers import wait_until
from tests.integration.test_ledger_worker import ledger_count, rollup_matches_rows
from tests.pg import create_database

pytestmark = [pytest.mark.integration, pytest.mark.fault]

BUDGETS = """\
users:
  tiers: {free: {usd: 0.05}}
features:
  chat: {period: month, usd: 1000}
"""


def ledger_metrics(port: int) -> dict[str, float]:
    """The worker's ``spendstream_ledger_*`` metrics ({} while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {name: float(value) for name, value in
            re.findall(r"^(spendstream_ledger_\w+) (\S+)$", text, re.M)}


def ledger_sums(url: str) -> dict[str, tuple[int, Decimal]]:
    with psycopg.connect(url) as conn:
        return {u: (n, s) for u, n, s in conn.execute(
            "SELECT user_id, count(*), sum(cost_usd) FROM cost_logs GROUP BY 1").fetchall()}


def test_ledger_rides_out_a_postgres_outage_without_delaying_flags(
        broker, redis_server, own_postgres, uid, tmp_path):
    url = create_database(own_postgres.url, f"ss_outage_{uid}")
    stack = Stack(broker.bootstrap, broker.url, redis_server.url, uid, tmp_path, BUDGETS,
                  partitions=2, extra={"SPENDSTREAM_DATABASE_URL": url})
    stack.create_topics()
    keys = stack.redis()
    published = Ledger()

    def send(user: str, n: int, cost: str) -> None:
        events = [usage(user, cost=cost) for _ in range(n)]
        for e in events:
            published.add(e)
        stack.publish(message(e) for e in events)

    port = free_port()
    try:
        worker = stack.worker(SPENDSTREAM_METRICS_PORT=str(port))
        send("acct-1", 20, "0.001")
        send("acct-2", 10, "0.002")
        wait_until(lambda: ledger_count(url) == 30, 90, "the first 30 rows", check=worker.alive)

        own_postgres.stop()
        # acct-3 crosses its $0.05 day: 6 x $0.01. Enforcement must not wait for the ledger.
        send("acct-3", 6, "0.01")
        send("acct-1", 30, "0.001")
        flag = wait_until(lambda: keys.get("cutoff:user:acct-3"), 60,
                          "acct-3's cutoff flag while PostgreSQL is down", check=worker.alive)
        # The spend of the batch that reached $0.05 (the 5th event, or the 6th with it).
        assert Decimal(flag["spent"]) in (Decimal("0.05"), Decimal("0.06")), flag
        assert published.settle(keys, 30, kinds=("user",), check=worker.alive) == []
        wait_until(lambda: "unavailable" in worker.output(), 30,
                   "the ledger's outage warning", check=worker.alive)
        # Stay down through several retries (the status line says so each second).
        wait_until(lambda: worker.output().count("POSTGRES DOWN") >= 3, 30,
                   "three status lines with PostgreSQL down", check=worker.alive)
        send("acct-2", 5, "0.002")
        assert ledger_count(url) == -1  # still down: nothing could have been written
        down = ledger_metrics(port)
        assert down["spendstream_ledger_postgres_up"] == 0
        assert down["spendstream_ledger_outages_total"] == 1
        assert down["spendstream_ledger_rows_written_total"] == 30

        own_postgres.start()
        total = published.total
        wait_until(lambda: ledger_count(url) == total, 90,
                   f"all {total} rows after PostgreSQL came back", check=worker.alive)
        wait_until(lambda: "PostgreSQL is back" in worker.output(), 30, "the recovery line")
        expected = {u: (published.n[("user", u)], published.usd[("user", u)])
                    for u in published.users()}
        assert ledger_sums(url) == expected
        assert rollup_matches_rows(url) == []
        log = worker.output()
        assert log.count("ledger: PostgreSQL at") == 1, "one warning per outage"
        up = ledger_metrics(port)
        assert up["spendstream_ledger_postgres_up"] == 1
        assert up["spendstream_ledger_rows_written_total"] == total
    finally:
        stack.close()
