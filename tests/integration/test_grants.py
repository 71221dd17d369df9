"""Per-user grants end to end: ``spendstream grant`` / ``unblock`` (the real CLI) and the
dashboard's write actions, against the session's Tansu broker, a real Redis, a real
``spendstream worker`` and its ledger on PostgreSQL, with the real ``Guard`` deciding.

A user is cut off; a grant lets the guard admit them again and the worker does not cut
them off again until their spend passes the raised budget; the same grant id sent twice
counts once; a worker restart keeps the grant; each grant raises one ``grant`` alert; the
ledger's ``grants`` table and ``spendstream report`` show it. ``unblock`` likewise.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from spendstream.contract.keys import cutoff_user, spend_user
from spendstream.dashboard.server import build_app
from spendstream.domain.budgets import parse_budgets
from spendstream.errors import BudgetExceeded
from spendstream.producers.guard import Guard
from spendstream.settings import load_settings
from tests.dashboard_stack import ledger_rows
from tests.fault.faultkit import Keys, Stack, Worker, message, usage
from tests.helpers import metric, wait_until
from tests.pg import create_database, drop_database

pytestmark = [pytest.mark.integration]

BUDGETS = """\
thresholds: {warn: 0.8, cutoff: 1.0, alert: 1.2}
users:
  default_tier: free
  tiers: {free: {usd: 0.10}}
features:
  chat: {period: month, usd: 100}
"""
TOKEN = "grant-token-for-tests"
MSGS = [{"role": "user", "content": "hi"}]


class Env:
    """The stack, its ledger, the worker now running and the events published."""

    def __init__(self, stack: Stack, url: str) -> None:
        self.stack = stack
        self.url = url
        self.keys: Keys = stack.redis()
        self.published = 0
        self.worker: Worker = stack.worker("w", log_level="warning")
        self.guard = Guard(stack.redis_url, parse_budgets(yaml.safe_load(BUDGETS)),
                           prefix=stack.prefix, cache_ttl=0)
        # The same budgets with reservations: each call's worst case is held against the
        # day's budget, which a grant must raise for this guard too.
        self.holding = Guard(stack.redis_url, parse_budgets(
            yaml.safe_load(BUDGETS + "reservations: {ttl: 10m, hold: 5s}\n")),
            prefix=stack.prefix, cache_ttl=0)

    def spend(self, user: str, n: int, cost: str) -> None:
        self.stack.publish(message(usage(user, cost=cost)) for _ in range(n))
        self.published += n

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.stack.env("cli")}
        return subprocess.run([sys.executable, "-m", "spendstream", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    def live(self, user: str) -> dict[str, Any]:
        return self.keys.get(spend_user(user)) or {}

    def admitted(self, user: str) -> bool:
        try:
            self.guard.admit(user, "chat", MSGS, model="gpt-4o")
        except BudgetExceeded:
            return False
        return True

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url) as conn:
            return conn.execute(query).fetchall()

    def grants_applied(self) -> float:
        return metric(self.worker.metrics(), "spendstream_grants_total") or 0


@pytest.fixture
def env(broker: Any, redis_server: Any, pg_admin_url: str, tmp_path: Any) -> Iterator[Env]:
    uid = uuid.uuid4().hex[:10]
    url = create_database(pg_admin_url, f"ss_grant_{uid}")
    stack = Stack(broker.bootstrap, broker.url, redis_server.url, uid, tmp_path, BUDGETS,
                  partitions=2, extra={"SPENDSTREAM_DATABASE_URL": url})
    stack.create_topics()
    try:
        yield Env(stack, url)
    finally:
        stack.close()
        drop_database(pg_admin_url, f"ss_grant_{uid}")


def cut_off(env: Env, user: str) -> None:
    """Spend $0.12 of the $0.10 day: the worker cuts the user off, the guard refuses."""
    env.spend(user, 4, "0.03")
    wait_until(lambda: env.keys.get(cutoff_user(user)), 60, f"{user}'s cutoff",
               check=env.worker.alive)
    assert not env.admitted(user)


def test_grant_and_unblock_through_the_cli(env: Env) -> None:
    w = env.worker
    cut_off(env, "acct-g")

    # A grant of 10 cents: budget 0.20, spend 0.12, the cutoff flag cleared.
    r = env.cli("grant", "acct-g", "--usd", "0.10", "--id", "g-1", "--reason", "ticket 7")
    assert r.returncode == 0, r.stderr
    assert "raised by $0.10" in r.stdout
    live = wait_until(lambda: (v := env.live("acct-g")).get("budget_usd") == "0.20" and v,
                      60, "the raised budget on the live spend key", check=w.alive)
    assert live["remaining_usd"] == "0.08" and Decimal(live["spent_usd"]) == Decimal("0.12")
    wait_until(lambda: env.keys.get(cutoff_user("acct-g")) is None, 30, "the cutoff cleared")
    assert env.admitted("acct-g")
    # What the guard says is left counts the grant, and a reservation is held against the
    # raised budget (without the grant, 0.12 spent of 0.10 refuses every call).
    assert env.guard.admit("acct-g", "chat", MSGS, model="gpt-4o").remaining_usd == \
        Decimal("0.08")
    held = env.holding.admit("acct-g", "chat", MSGS, model="gpt-4o", max_tokens=50)
    assert held.reservation is not None and held.remaining_usd == Decimal("0.08")

    # The same grant id again counts once; spend under the raised budget is not cut off.
    assert env.cli("grant", "acct-g", "--usd", "0.10", "--id", "g-1").returncode == 0
    env.spend("acct-g", 1, "0.05")  # 0.17 of 0.20
    live = wait_until(lambda: (v := env.live("acct-g")).get("events") == 5 and v, 60,
                      "the fifth event", check=w.alive)
    assert live["budget_usd"] == "0.20"
    assert env.keys.get(cutoff_user("acct-g")) is None and env.admitted("acct-g")
    assert env.grants_applied() == 1

    # Past the raised budget: cut off again.
    env.spend("acct-g", 1, "0.05")  # 0.22 of 0.20
    wait_until(lambda: env.keys.get(cutoff_user("acct-g")), 60, "the cutoff at 0.22",
               check=w.alive)
    assert not env.admitted("acct-g")

    # A restart keeps the grant (it lives in the changelogged state): 0.23 of 0.20.
    assert w.stop() == 0, w.output()
    env.worker = w = env.stack.worker("w", log_level="warning")
    env.spend("acct-g", 1, "0.01")
    live = wait_until(lambda: (v := env.live("acct-g")).get("events") == 7 and v, 90,
                      "the event after the restart", check=w.alive)
    assert live["budget_usd"] == "0.20" and live["remaining_usd"] == "0"

    # Unblock: the tier's whole budget left again: 0.23 + 0.10 - 0.20 = 0.13 more, so
    # budget 0.33 with 0.10 left.
    r = env.cli("unblock", "acct-g", "--id", "u-1", "--reason", "loop fixed")
    assert r.returncode == 0, r.stderr
    live = wait_until(lambda: (v := env.live("acct-g")).get("budget_usd") == "0.33" and v,
                      60, "the unblock applied", check=w.alive)
    assert live["remaining_usd"] == "0.10"
    wait_until(lambda: env.keys.get(cutoff_user("acct-g")) is None, 30, "the cutoff cleared")
    assert env.admitted("acct-g")
    assert env.cli("unblock", "acct-g", "--id", "u-1").returncode == 0  # again: once
    # A second unblock (a double click, a new id) of a user who is not cut off: nothing.
    assert env.cli("unblock", "acct-g", "--id", "u-2").returncode == 0
    env.spend("acct-g", 1, "0.01")
    live = wait_until(lambda: (v := env.live("acct-g")).get("events") == 8 and v, 60,
                      "the event after the unblock", check=w.alive)
    assert live["budget_usd"] == "0.33"

    # One alert per grant: exactly two of kind grant, in order.
    alerts = [orjson.loads(a.value) for a in env.stack.read(".alerts", 100, timeout=5)]
    grants = [a for a in alerts if a["kind"] == "grant"]
    assert [(a["subject"], a["previous"], a["level"]) for a in grants] == [
        ("acct-g", "cutoff", "ok"), ("acct-g", "cutoff", "ok")], grants
    assert "g-1" in grants[0]["detail"] and "ticket 7" in grants[0]["detail"]
    assert grants[1]["budget"] == "0.33"

    # The ledger: one row per grant id, and the report's grants section.
    wait_until(lambda: ledger_rows(env.url) == env.published, 60, "every event in the ledger")
    rows = wait_until(lambda: len(r := env.sql(
        "SELECT grant_id, kind, user_id, usd, reason FROM grants ORDER BY ts")) == 3 and r,
        60, "the three requests in the ledger")
    assert rows == [("g-1", "grant", "acct-g", Decimal("0.10"), "ticket 7"),
                    ("u-1", "unblock", "acct-g", None, "loop fixed"),
                    ("u-2", "unblock", "acct-g", None, "")]
    report = env.cli("report", "--period", "today")
    assert report.returncode == 0, report.stderr
    section = report.stdout.split("\ngrants\n", 1)[1]
    assert "acct-g" in section and "grant" in section and "unblock" in section


def test_errors_name_what_is_wrong(env: Env) -> None:
    r = env.cli("grant", "acct-x")
    assert r.returncode == 2 and "needs usd, tokens or both" in r.stderr
    r = env.cli("grant", "acct-x", "--usd", "-1")
    assert r.returncode == 2 and "usd" in r.stderr
    r = env.cli("grant", "acct-x", "--usd", "1", "--until", "2001-01-01")
    assert r.returncode == 2 and "before the grant's day" in r.stderr
    r = env.cli("grant", "acct-x", "--usd", "1e-12")
    assert r.returncode == 2 and "usd: 1e-12 has more than 6 decimal places" in r.stderr
    r = env.cli("grant", "acct-x", "--usd", "1.5E+3", "--tokens", "500")
    assert r.returncode == 0, r.stderr
    assert "raised by $1500 and 500 tokens" in r.stdout
    assert r.stderr.strip() == ("spendstream: warning: acct-x's tier free has no tokens "
                                "budget, so the granted tokens change nothing for them")


def _settings(env: Env, token: str | None) -> Any:
    e = env.stack.env("dash")
    return load_settings(
        kafka_url=e["SPENDSTREAM_KAFKA_URL"], redis_url=e["SPENDSTREAM_REDIS_URL"],
        database_url=env.url, topic=e["SPENDSTREAM_TOPIC"],
        redis_prefix=e["SPENDSTREAM_REDIS_PREFIX"], dashboard_token=token)


async def test_grant_and_unblock_from_the_dashboard_api(env: Env) -> None:
    budgets = parse_budgets(yaml.safe_load(BUDGETS))
    reader = TestClient(TestServer(build_app(_settings(env, None), budgets, alert_feed=False)))
    client = TestClient(TestServer(build_app(_settings(env, TOKEN), budgets, alert_feed=False)))
    await reader.start_server()
    await client.start_server()
    try:
        spec = await (await client.get("/api/openapi.json")).json()
        body = spec["paths"]["/api/users/{user}/grant"]["post"]["requestBody"]
        assert {"usd", "tokens", "until", "reason", "grant_id"} <= set(
            body["content"]["application/json"]["schema"]["properties"])
        r = await reader.post("/api/users/acct-d/grant", json={"usd": "0.1"})
        assert r.status == 403  # read-only without the token setting
        r = await client.post("/api/users/acct-d/grant", json={"usd": "0.1"})
        assert r.status == 401  # no token sent
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = await client.post("/api/users/acct-d/grant", headers=auth, json={"usd": 0.1})
        assert r.status == 400 and "usd" in (await r.json())["error"]  # a float: refused
        r = await client.post("/api/users/acct-d/unblock", headers=auth, json={"usd": "1"})
        assert r.status == 400 and "usd" in (await r.json())["error"]
        r = await client.post("/api/users/acct-d/grant", headers=auth, json={"usd": "1e-7"})
        assert r.status == 400
        assert "more than 6 decimal places" in (await r.json())["error"]

        await asyncio.to_thread(cut_off, env, "acct-d")  # publishes with its own loop
        r = await client.post("/api/users/acct-d/grant", headers=auth,
                              json={"usd": "0.10", "reason": "from the page"})
        assert r.status == 200, await r.text()
        sent = await r.json()
        assert sent["control"]["control"] == "grant" and sent["control"]["by"] == "dashboard"
        wait_until(lambda: env.live("acct-d").get("budget_usd") == "0.20", 60,
                   "the dashboard's grant applied", check=env.worker.alive)
        wait_until(lambda: env.keys.get(cutoff_user("acct-d")) is None, 30, "cutoff cleared")
        assert env.admitted("acct-d")

        await asyncio.to_thread(env.spend, "acct-d", 3, "0.03")  # 0.21 of 0.20: cut off again
        wait_until(lambda: env.keys.get(cutoff_user("acct-d")), 60, "cut off again",
                   check=env.worker.alive)
        r = await client.post("/api/users/acct-d/unblock", headers=auth, json={})
        assert r.status == 200, await r.text()
        wait_until(lambda: env.live("acct-d").get("budget_usd") == "0.31", 60,
                   "the dashboard's unblock applied", check=env.worker.alive)
        wait_until(lambda: env.keys.get(cutoff_user("acct-d")) is None, 30, "cutoff cleared")
        assert env.admitted("acct-d")
        kinds = wait_until(lambda: len(r := env.sql(
            "SELECT kind, granted_by FROM grants ORDER BY ts")) == 2 and r, 60,
            "both in the ledger")
        assert kinds == [("grant", "dashboard"), ("unblock", "dashboard")]
    finally:
        await reader.close()
        await client.close()
