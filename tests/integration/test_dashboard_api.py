"""The dashboard's HTTP API against a real worker, ledger (PostgreSQL), Redis and alert
topic: every route documented and answering, the numbers equal to the ledger's, flags and
alerts as the worker wrote them, and the kill switch only with the token, refused by the
real Guard after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from spendstream.dashboard.server import build_app
from spendstream.domain.budgets import parse_budgets
from spendstream.errors import FeatureDisabled
from spendstream.producers.guard import Guard
from spendstream.settings import load_settings
from tests.dashboard_stack import BUDGETS, UNKNOWN, Running, money, running  # noqa: F401
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration]
TOKEN = "s3cret-token-for-tests"


def _settings(run: Running, token: str | None) -> Any:
    env = run.env()
    return load_settings(
        kafka_url=env["SPENDSTREAM_KAFKA_URL"], redis_url=env["SPENDSTREAM_REDIS_URL"],
        database_url=run.database_url, topic=env["SPENDSTREAM_TOPIC"],
        redis_prefix=env["SPENDSTREAM_REDIS_PREFIX"], dashboard_token=token)


async def _client(run: Running, token: str | None) -> TestClient[Any, Any]:
    import yaml

    app = build_app(_settings(run, token), parse_budgets(yaml.safe_load(BUDGETS)))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def api(running: Running) -> AsyncIterator[TestClient[Any, Any]]:  # noqa: F811
    client = await _client(running, None)
    yield client
    await client.close()


@pytest.fixture
async def writable(running: Running) -> AsyncIterator[TestClient[Any, Any]]:  # noqa: F811
    client = await _client(running, TOKEN)
    yield client
    await client.close()


async def test_every_route_is_documented_and_every_documented_route_answers(api):
    spec = await (await api.get("/api/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    served = {(r.method, r.resource.canonical) for r in api.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/")
              and r.method != "HEAD"}
    assert served == documented
    for method, path in sorted(documented):
        r = await api.request(method, path.replace("{feature}", "chat").replace("{user}", "acct-0"))
        body = await r.json()
        if method == "GET":
            assert r.status == 200, (path, body)
        else:  # no token configured: read-only, with a message that says what to do
            assert r.status == 403, (path, body)
            assert "SPENDSTREAM_DASHBOARD_TOKEN" in body["error"]


@pytest.mark.parametrize("by,column", [("feature", "feature"), ("user", "user_id"),
                                       ("model", "model")])
@pytest.mark.parametrize("period", ["today", "month"])
async def test_spend_equals_the_ledger(api, running, by, column, period):  # noqa: F811
    body = await (await api.get(f"/api/spend?by={by}&period={period}&top=1000")).json()
    trunc = "day" if period == "today" else "month"
    expected = running.sql(
        f"SELECT {column}, count(*), COALESCE(SUM(cost_usd), 0), "
        f"count(*) FILTER (WHERE cost_usd IS NULL) FROM cost_logs "
        f"WHERE ts >= date_trunc('{trunc}', now()) GROUP BY 1")
    got = {r["key"]: (r["calls"], r["spend_usd"], r["unpriced"]) for r in body["rows"]}
    assert got == {k: (n, money(s), u) for k, n, s, u in expected}
    total = running.sql("SELECT SUM(cost_usd) FROM cost_logs")[0][0]
    assert body["total_usd"] == money(total)
    assert len(got) >= 2
    if by == "model":  # an unpriced model: its calls counted, its spend 0, never a price
        assert got[UNKNOWN] == (3, "0", 3)


async def test_hourly_sums_equal_the_ledger(api, running):  # noqa: F811
    body = await (await api.get("/api/spend/hourly?by=model")).json()
    assert len(body["hours"]) == 48
    expected = dict(running.sql("SELECT model, COALESCE(SUM(cost_usd), 0) FROM cost_logs "
                                "GROUP BY 1"))
    got = {m: money(sum(map(Decimal, v))) for m, v in body["series"].items()}
    assert got == {m: money(s) for m, s in expected.items()}
    assert got[UNKNOWN] == "0"


async def test_top_users_have_tier_and_what_is_left(api, running):  # noqa: F811
    body = await (await api.get("/api/users/top?period=today&top=3")).json()
    rows = {r["key"]: r for r in body["rows"]}
    assert list(rows)[:2] == ["acct-vip", "acct-heavy"]
    assert rows["acct-vip"]["tier"] == "pro" and rows["acct-vip"]["daily_budget_usd"] == "5"
    assert rows["acct-vip"]["spend_usd"] == "0.75"
    assert rows["acct-vip"]["left_today_usd"] == "4.25"
    assert rows["acct-heavy"]["tier"] == "free"
    assert rows["acct-heavy"]["left_today_usd"] == "0"  # 0.15 spent of 0.10


async def test_flags_say_who_why_and_when_it_resets(api, running):  # noqa: F811
    body = await (await api.get("/api/flags")).json()
    flags = {f["key"]: f for f in body["flags"]}
    heavy = flags["cutoff:user:acct-heavy"]
    assert heavy["scope"] == "user" and heavy["id"] == "acct-heavy"
    assert "tier free" in heavy["reason"]
    assert heavy["reset_at"].endswith("T00:00:00Z") and heavy["ttl_seconds"] > 0


async def test_alert_feed_has_the_cutoff_and_the_unpriced_model(api):

    seen: set[tuple[str, str, str]] = set()
    for _ in range(200):
        body = await (await api.get("/api/alerts")).json()
        seen = {(a["scope"], a["subject"], a["kind"]) for a in body["alerts"]}
        if {("user", "acct-heavy", "budget"), ("model", UNKNOWN, "unpriced")} <= seen:
            break
        import asyncio

        await asyncio.sleep(0.1)
    assert ("user", "acct-heavy", "budget") in seen
    assert ("model", UNKNOWN, "unpriced") in seen


async def test_features_lines_pace_and_state(api, running):  # noqa: F811
    body = await (await api.get("/api/features")).json()
    rows = {f["feature"]: f for f in body["features"]}
    assert list(rows) == ["chat", "search", "summarize"]
    search = rows["search"]
    assert search["period"] == "day" and search["budget_usd"] == "0.05"
    assert search["lines"] == {"warn": "0.04", "cutoff": "0.05", "alert": "0.06"}
    assert search["spent_usd"] == money(running.sql(
        "SELECT SUM(cost_usd) FROM cost_logs WHERE feature = 'search'")[0][0]) == "0.06"
    assert rows["summarize"]["spent_usd"] == "0.75" and rows["summarize"]["hard_cutoff"]
    assert rows["chat"]["status"] in ("over", "on track", "under")
    assert Decimal(rows["chat"]["prorated_usd"]) <= Decimal(100)


async def test_bad_input_is_a_clear_400(api):
    for path, words in [("/api/spend?period=yesterday", "period 'yesterday'"),
                        ("/api/spend?by=planet", "by='planet'"),
                        ("/api/spend/hourly?hours=x", "not a whole number"),
                        ("/api/spend?period=2026-11-30..2026-11-01", "TO is before FROM")]:
        r = await api.get(path)
        assert r.status == 400
        assert words in (await r.json())["error"]


async def test_kill_switch_needs_the_token_and_the_guard_refuses(writable, running):  # noqa: F811
    import yaml

    r = await writable.post("/api/features/chat/disable")
    assert r.status == 401 and "Bearer" in (await r.json())["error"]
    r = await writable.post("/api/features/chat/disable",
                            headers={"Authorization": "Bearer wrong-token"})
    assert r.status == 401
    guard = Guard(running.stack.redis_url, parse_budgets(yaml.safe_load(BUDGETS)),
                  prefix=running.stack.prefix, cache_ttl=0)
    msgs = [{"role": "user", "content": "hi"}]
    guard.admit("acct-0", "chat", msgs, model="gpt-4o")  # admitted before
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        r = await writable.post("/api/features/chat/disable", headers=auth,
                                json={"reason": "runaway prompt loop", "ttl_seconds": 600})
        assert r.status == 200
        with pytest.raises(FeatureDisabled, match="runaway prompt loop"):
            guard.admit("acct-0", "chat", msgs, model="gpt-4o")
        flags = {f["key"]: f for f in (await (await writable.get("/api/flags")).json())["flags"]}
        assert flags["cutoff:feature:chat"]["unit"] == "switch"
        rows = {f["feature"]: f for f in (await (await writable.get("/api/features")).json())[
            "features"]}
        assert rows["chat"]["state"] == "disabled"
    finally:
        r = await writable.post("/api/features/chat/enable", headers=auth)
    assert (await r.json())["was_disabled"] is True
    wait_until(lambda: guard.admit("acct-0", "chat", msgs, model="gpt-4o"), 5,
               "chat admitted again")
    guard.close()
