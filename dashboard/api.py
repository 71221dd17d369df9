"""The dashboard's HTTP API (aiohttp): spend from the ledger, live flags and spend from
Redis, the alert feed, feature budgets, and the kill switch behind a bearer token.

Every route is listed in :data:`ROUTES` with what the OpenAPI document says of it, so the
document and the routes cannot drift apart. Money is an exact decimal string.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from spendstream import switch
from spendstream.dashboard import ledger_reads as reads
from spendstream.dashboard import live
from spendstream.dashboard.alert_feed import KEEP, AlertFeed
from spendstream.dashboard.budget_view import feature_rows
from spendstream.dashboard.periods import money, period_bounds
from spendstream.domain.budgets import Budgets
from spendstream.errors import SpendstreamError
from spendstream.ledger.report import parse_period
from spendstream.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STAMP = "%Y-%m-%dT%H:%M:%SZ"
READ_ONLY = ("read-only: the dashboard's write actions are off. Start the dashboard with "
             "SPENDSTREAM_DASHBOARD_TOKEN set and send it as 'Authorization: Bearer <token>'")


@dataclass
class Context:
    """What the handlers read: settings, budgets, Redis, the ledger and the alert feed."""

    settings: Settings
    budgets: Budgets
    redis: aioredis.Redis
    ledger: reads.LedgerReader | None
    alerts: AlertFeed | None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


class ApiError(Exception):
    """An answer other than 200: status and a message saying what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


CTX = web.AppKey("ctx", Context)


def _ctx(request: web.Request) -> Context:
    return request.app[CTX]


async def _ledger(ctx: Context, fn: Callable[[Any], Any]) -> Any:
    if ctx.ledger is None:
        raise ApiError(503, "no spend ledger: set SPENDSTREAM_DATABASE_URL for the dashboard "
                       "(the worker's ledger database; `spendstream up` prints it)")
    try:
        return await asyncio.to_thread(ctx.ledger.call, fn)
    except SpendstreamError as e:
        raise ApiError(503, str(e)) from e


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime(STAMP)


def _period(request: web.Request, default: str = "month") -> tuple[str, datetime, datetime]:
    text = request.query.get("period", default)
    if text not in ("today", "week", "month") and ".." not in text:
        raise ApiError(400, f"period {text!r}: use today, week, month or FROM..TO "
                       "(e.g. 2026-11-01..2026-11-30)")
    try:
        start, end = parse_period(text, _ctx(request).clock())
    except SpendstreamError as e:
        raise ApiError(400, str(e)) from e
    return text, start, end


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name}={text!r} is not a whole number") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be from {low} to {high}")
    return value


def _choice(request: web.Request, name: str, options: tuple[str, ...], default: str) -> str:
    value = request.query.get(name, default)
    if value not in options:
        raise ApiError(400, f"{name}={value!r}: use one of {', '.join(options)}")
    return value


async def _redis(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except (RedisError, OSError) as e:
        raise ApiError(503, f"Redis unreachable ({type(e).__name__}); check "
                       "SPENDSTREAM_REDIS_URL") from e


def _row(r: reads.SpendRow) -> dict[str, Any]:
    return {"key": r.key, "calls": r.calls, "spend_usd": money(r.spend), "unpriced": r.unpriced}


# --- handlers -------------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    """What the dashboard is connected to, and whether it allows writes."""
    ctx = _ctx(request)
    return web.json_response({
        "now": _stamp(ctx.clock()), "writable": ctx.settings.dashboard_token is not None,
        "ledger": ctx.ledger is not None, "alert_topic": ctx.settings.alert_topic,
        "alert_feed_error": ctx.alerts.error if ctx.alerts else "no alert feed",
        "redis_prefix": ctx.settings.redis_prefix})


async def spend(request: web.Request) -> web.Response:
    """Spend by user, feature or model for a period."""
    by = _choice(request, "by", ("user", "feature", "model"), "feature")
    text, start, end = _period(request)
    top = _int(request, "top", 50, 1, 1000)
    feature, user = request.query.get("feature"), request.query.get("user")
    rows = await _ledger(_ctx(request), lambda c: reads.spend_by(
        c, by, start, end, feature, user, top))  # type: ignore[arg-type]
    total = sum((r.spend for r in rows), Decimal(0))
    return web.json_response({"by": by, "period": text, "from": _stamp(start),
                              "to": _stamp(end), "rows": [_row(r) for r in rows],
                              "total_usd": money(total)})


async def hourly(request: web.Request) -> web.Response:
    """Spend per hour over the last N hours (48 by default), by feature or model."""
    ctx = _ctx(request)
    by = _choice(request, "by", ("feature", "model"), "feature")
    hours = _int(request, "hours", 48, 1, 24 * 31)
    end = ctx.clock().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    rows = await _ledger(ctx, lambda c: reads.hourly(c, by, start, end))  # type: ignore[arg-type]
    labels = [_stamp(start + timedelta(hours=i)) for i in range(hours)]
    index = {h: i for i, h in enumerate(labels)}
    series: dict[str, list[str]] = {}
    for hour, key, amount in rows:
        values = series.setdefault(key, ["0"] * hours)
        values[index[_stamp(hour)]] = money(amount) or "0"
    return web.json_response({"by": by, "hours": labels, "series": series})


async def top_users(request: web.Request) -> web.Response:
    """Top users of today or this month, with their tier and what is left of today."""
    ctx = _ctx(request)
    period = _choice(request, "period", ("today", "month"), "today")
    top = _int(request, "top", 10, 1, 500)
    _, start, end = _period(request, period)
    rows = await _ledger(ctx, lambda c: reads.spend_by(c, "user", start, end, top=top))
    live_spend = await _redis(live.user_spend(ctx.redis, ctx.settings.redis_prefix,
                                              [r.key for r in rows]))
    users = ctx.budgets.users
    out = []
    for r in rows:
        tier = users.tier_of(r.key)
        limit = users.tiers.get(tier)
        now_value = live_spend.get(r.key, {})
        budget = None if limit is None or limit.usd is None else limit.usd
        left = now_value.get("remaining_usd")
        if left is None and budget is not None and not now_value:
            left = money(budget)  # nothing spent today yet
        out.append({**_row(r), "tier": tier, "daily_budget_usd": money(budget),
                    "today_live_usd": now_value.get("spent_usd"),
                    "left_today_usd": left})
    return web.json_response({"period": period, "from": _stamp(start), "to": _stamp(end),
                              "rows": out})


async def flags(request: web.Request) -> web.Response:
    """Who and what is cut off or warned right now, why, and when it resets."""
    ctx = _ctx(request)
    found = await _redis(live.flags(ctx.redis, ctx.settings.redis_prefix))
    return web.json_response({"flags": found})


async def alerts(request: web.Request) -> web.Response:
    """The newest alerts of the alert topic (budget, pace, spike, unpriced, token drift)."""
    ctx = _ctx(request)
    limit = _int(request, "limit", 100, 1, KEEP)
    if ctx.alerts is None:
        raise ApiError(503, "no alert feed in this dashboard")
    return web.json_response({"topic": ctx.settings.alert_topic, "error": ctx.alerts.error,
                              "alerts": ctx.alerts.latest(limit)})


async def features(request: web.Request) -> web.Response:
    """Feature budgets: spend of the period, warn / cutoff / alert lines, pace, state."""
    ctx = _ctx(request)
    now = ctx.clock()
    day_start, day_end = period_bounds("day", now)
    month_start, month_end = period_bounds("month", now)

    def query(conn: Any) -> tuple[dict[str, Decimal], dict[str, Decimal], dict[str, Decimal]]:
        today = {r.key: r.spend for r in reads.spend_by(conn, "feature", day_start, day_end)}
        month = {r.key: r.spend for r in reads.spend_by(conn, "feature", month_start,
                                                        month_end)}
        period: dict[str, Decimal] = {}
        for name, conf in ctx.budgets.features.items():
            if conf.period in ("day", "month"):
                period[name] = (today if conf.period == "day" else month).get(name, Decimal(0))
            else:
                s, e = period_bounds(conf.period, now)
                got = reads.spend_by(conn, "feature", s, e, feature=name)
                period[name] = got[0].spend if got else Decimal(0)
        return period, today, month

    period, today, month = await _ledger(ctx, query)
    found = await _redis(live.flags(ctx.redis, ctx.settings.redis_prefix))
    t = ctx.budgets.thresholds
    return web.json_response({
        "now": _stamp(now), "thresholds": {"warn": money(t.warn), "cutoff": money(t.cutoff),
                                           "alert": money(t.alert)},
        "features": feature_rows(ctx.budgets, period, today, month, found, now)})


def _authorise(request: web.Request) -> None:
    token = _ctx(request).settings.dashboard_token
    if token is None:
        raise ApiError(403, READ_ONLY)
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.get_secret_value().encode()):
        raise ApiError(401, "a write needs the dashboard token: send "
                       "'Authorization: Bearer <SPENDSTREAM_DASHBOARD_TOKEN>'")


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


async def disable(request: web.Request) -> web.Response:
    """Kill switch: write the feature's cutoff flag (guards refuse it with FeatureDisabled)."""
    _authorise(request)
    ctx = _ctx(request)
    feature = request.match_info["feature"]
    body = await _body(request)
    reason = body.get("reason") or "disabled from the dashboard"
    ttl = body.get("ttl_seconds")
    if not isinstance(reason, str) or len(reason) > 500:
        raise ApiError(400, "reason must be text of at most 500 characters")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0):
        raise ApiError(400, "ttl_seconds must be a positive whole number (or absent)")
    try:
        w = switch.disable(ctx.settings.redis_prefix, feature, reason, ttl, ctx.clock())
    except ValueError as e:
        raise ApiError(400, str(e)) from e
    await _redis(ctx.redis.set(w.key, w.raw, ex=w.ttl))
    return web.json_response({"feature": feature, "disabled": True, "flag": w.value})


async def enable(request: web.Request) -> web.Response:
    """Undo a kill switch (or a hard budget cutoff): delete the feature's cutoff flag."""
    _authorise(request)
    ctx = _ctx(request)
    feature = request.match_info["feature"]
    removed = await _redis(ctx.redis.delete(switch.switch_key(ctx.settings.redis_prefix,
                                                              feature)))
    return web.json_response({"feature": feature, "disabled": False,
                              "was_disabled": bool(removed)})


@dataclass(frozen=True)
class Route:
    """One API route and what its OpenAPI entry says."""

    method: str
    path: str
    handler: Handler
    params: tuple[tuple[str, str], ...] = ()
    """(name, description) of each query parameter."""
    write: bool = False


PERIOD = ("period", "today, week, month or FROM..TO (dates, both included; UTC)")
ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/status", status),
    Route("GET", "/api/spend", spend, (
        ("by", "user, feature (default) or model"), PERIOD,
        ("feature", "only this feature"), ("user", "only this user"),
        ("top", "rows at most (default 50)"))),
    Route("GET", "/api/spend/hourly", hourly, (
        ("by", "feature (default) or model"), ("hours", "how many hours back (default 48)"))),
    Route("GET", "/api/users/top", top_users, (
        ("period", "today (default) or month"), ("top", "rows at most (default 10)"))),
    Route("GET", "/api/flags", flags),
    Route("GET", "/api/alerts", alerts, (("limit", f"alerts at most (default 100, max {KEEP})"),)),
    Route("GET", "/api/features", features),
    Route("POST", "/api/features/{feature}/disable", disable, write=True),
    Route("POST", "/api/features/{feature}/enable", enable, write=True),
)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn :class:`ApiError` into ``{"error": message}`` with its status."""
    try:
        return await handler(request)
    except ApiError as e:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return web.json_response({"error": str(e)}, status=e.status, headers=headers)
