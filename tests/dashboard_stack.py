"""A running spendstream for the dashboard tests: the session's Tansu broker and Redis, a
real ``spendstream worker`` with the ledger on a real PostgreSQL, and known traffic.

Built once per test module (a worker and a database take seconds); tests only read it,
except the kill-switch tests, which clean up the flag they write.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fault.faultkit import Stack, message, usage
from tests.helpers import wait_until
from tests.pg import create_database, drop_database

BUDGETS = """\
thresholds: {warn: 0.8, cutoff: 1.0, alert: 1.2}
users:
  default_tier: free
  tiers: {free: {usd: 0.10}, pro: {usd: 5.00}}
  members: {acct-vip: pro}
features:
  chat: {period: month, usd: 100}
  search: {period: day, usd: 0.05}
  summarize: {period: month, usd: 50, cutoff: true}
prices:
  gpt-4o: {input: 2.50, output: 10.00}
"""
UNKNOWN = "mystery-model-x"


@dataclass
class Running:
    """The stack, its ledger URL, and how many events went in."""

    stack: Stack
    database_url: str
    events: int

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a dashboard process on this stack."""
        return {**self.stack.env("dash"), "SPENDSTREAM_DATABASE_URL": self.database_url,
                **extra}

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as conn:
            conn.execute("SET TIME ZONE 'UTC'")
            return conn.execute(query, params).fetchall()


def traffic() -> list[dict[str, Any]]:
    """Known events: ordinary spend, a user past their daily budget (cutoff), a VIP, a
    feature over its day budget (search), and calls of a model with no price."""
    events = [usage(f"acct-{i % 5}", "chat", cost=f"0.00{i % 9 + 1}") for i in range(40)]
    events += [usage("acct-heavy", "chat", cost="0.03") for _ in range(5)]  # 0.15 > 0.10
    events += [usage("acct-vip", "summarize", cost="0.25") for _ in range(3)]
    events += [usage(f"acct-{i}", "search", cost="0.004") for i in range(15)]  # 0.06 > 0.05
    events += [usage("acct-1", "chat", cost=None, model=UNKNOWN) for _ in range(3)]
    events += [usage("acct-2", "chat", cost=None, input_tokens=1000,
                     output_tokens=100)]  # priced from prices:
    return events


def ledger_rows(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return int(conn.execute("SELECT count(*) FROM cost_logs").fetchone()[0])
    except psycopg.Error:
        return -1


@pytest.fixture(scope="module")
def running(broker: Any, redis_server: Any, pg_admin_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    uid = uuid.uuid4().hex[:10]
    url = create_database(pg_admin_url, f"ss_dash_{uid}")
    tmp: Path = tmp_path_factory.mktemp("dash")
    stack = Stack(broker.bootstrap, broker.url, redis_server.url, uid, tmp, BUDGETS,
                  partitions=2, extra={"SPENDSTREAM_DATABASE_URL": url})
    stack.create_topics()
    try:
        worker = stack.worker("w", log_level="warning")
        events = traffic()
        stack.publish(message(e) for e in events)
        wait_until(lambda: ledger_rows(url) == len(events), 120,
                   f"{len(events)} ledger rows", check=worker.alive, interval=0.2)
        keys = stack.redis()
        wait_until(lambda: keys.get("cutoff:user:acct-heavy"), 60, "acct-heavy's cutoff",
                   check=worker.alive)
        yield Running(stack, url, len(events))
    finally:
        stack.close()
        drop_database(pg_admin_url, f"ss_dash_{uid}")


def money(value: Decimal | None) -> str | None:
    """The API's money text for an exact decimal."""
    from spendstream.dashboard.periods import money as fmt

    return fmt(value)
