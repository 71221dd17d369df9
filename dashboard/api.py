"""The dashboard's HTTP API (aiohttp): spend from the ledger, live flags and spend from
Redis, the alert feed, feature budgets, and the kill switch (:mod:`.writes`).

Every route is listed in :data:`ROUTES` with what the OpenAPI document says of it, so the
document and the routes cannot drift apart. Money is an exact decimal string.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from spendstream.dashboard import ledger_reads as reads
from spendstream.dashboard import live, writes
from spendstream.dashboard.alert_feed import KEEP
from spendstream.dashboard.budget_view import feature_rows, user_today
from spendstream.dashboard.context import (
    CTX,
    STAMP,
    ApiError,
    Context,
    Handler,
    ctx_of,
    errors,
    ledger_call,
    redis_call,
)
from spendstream.dashboard.periods import money, period_bounds
from spendstream.errors import SpendstreamError
from spendstream.ledger.queries import Filters, cache_hits
from spendstream.ledger.report import parse_period

__all__ = ["CTX", "ROUTES", "Context", "Route", "errors"]


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime(STAMP)


def _period(request: web.Request, default: str = "month") -> tuple[str, datetime, datetime]:
    text = request.query.get("period", default)
    if text not in ("today", "week", "month") and ".." not in text:
        raise ApiError(400, f"period {text!r}: use today, week, month or FROM..TO "
                       "(e.g. 2026-11-01..2026-11-30)")
    try:
        start, end = parse_period(text, ctx_of(request).clock())
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


def _row(r: reads.SpendRow) -> dict[str, Any]:
    return {"key": r.key, "calls": r.calls, "spend_usd": money(r.spend), "unpriced": r.unpriced}


# --- handlers -------------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    """What the dashboard is connected to, and whether it allows writes."""
    ctx = ctx_of(request)
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
    rows = await ledger_call(ctx_of(request), lambda c: reads.spend_by(
        c, by, start, end, feature, user, top))  # type: ignore[arg-type]
    total = sum((r.spend for r in rows), Decimal(0))
    return web.json_response({"by": by, "period": text, "from": _stamp(start),
                              "to": _stamp(end), "rows": [_row(r) for r in rows],
                              "total_usd": money(total)})


async def hourly(request: web.Request) -> web.Response:
    """Spend per hour over the last N hours (48 by default), by feature or model."""
    ctx = ctx_of(request)
    by = _choice(request, "by", ("feature", "model"), "feature")
    hours = _int(request, "hours", 48, 1, 24 * 31)
    end = ctx.clock().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    rows = await ledger_call(ctx, lambda c: reads.hourly(c, by, start, end))  # type: ignore[arg-type]
    labels = [_stamp(start + timedelta(hours=i)) for i in range(hours)]
    index = {h: i for i, h in enumerate(labels)}
    series: dict[str, list[str]] = {}
    for hour, key, amount in rows:
        values = series.setdefault(key, ["0"] * hours)
        values[index[_stamp(hour)]] = money(amount) or "0"
    return web.json_response({"by": by, "hours": labels, "series": series})


async def top_users(request: web.Request) -> web.Response:
    """Top users of today or this month, with their tier, whether they are cut off now, and
    their daily budget (raised by any grant) and what is left of it today."""
    ctx = ctx_of(request)
    period = _choice(request, "period", ("today", "month"), "today")
    top = _int(request, "top", 10, 1, 500)
    _, start, end = _period(request, period)
    rows = await ledger_call(ctx, lambda c: reads.spend_by(c, "user", start, end, top=top))
    now = await redis_call(live.users_now(ctx.redis, ctx.settings.redis_prefix,
                                          [r.key for r in rows]))
    users = ctx.budgets.users
    out = []
    for r in rows:
        tier = users.tier_of(r.key)
        value, cut_off = now.get(r.key, ({}, False))
        out.append({**_row(r), "tier": tier, "cut_off": cut_off,
                    **user_today(users.tiers.get(tier), value)})
    return web.json_response({"period": period, "from": _stamp(start), "to": _stamp(end),
                              "rows": out})


async def flags(request: web.Request) -> web.Response:
    """Who and what is cut off or warned right now, why, and when it resets."""
    ctx = ctx_of(request)
    found = await redis_call(live.flags(ctx.redis, ctx.settings.redis_prefix))
    return web.json_response({"flags": found})


async def alerts(request: web.Request) -> web.Response:
    """The newest alerts of the alert topic (budget, pace, spike, unpriced, token drift)."""
    ctx = ctx_of(request)
    limit = _int(request, "limit", 100, 1, KEEP)
    if ctx.alerts is None:
        raise ApiError(503, "no alert feed in this dashboard")
    return web.json_response({"topic": ctx.settings.alert_topic, "error": ctx.alerts.error,
                              "alerts": ctx.alerts.latest(limit)})


async def features(request: web.Request) -> web.Response:
    """Feature budgets: spend of the period, warn / cutoff / alert lines, pace, state, and
    the month's response-cache hit rate."""
    ctx = ctx_of(request)
    now = ctx.clock()
    day_start, day_end = period_bounds("day", now)
    month_start, month_end = period_bounds("month", now)

    caching = any(conf.cache is not None for conf in ctx.budgets.features.values())

    def query(conn: Any) -> tuple[dict[str, Decimal], dict[str, Decimal], dict[str, Decimal],
                                  dict[str, tuple[int, int]]]:
        today = {r.key: r.spend for r in reads.spend_by(conn, "feature", day_start, day_end)}
        month_rows = reads.spend_by(conn, "feature", month_start, month_end)
        month = {r.key: r.spend for r in month_rows}
        hits = cache_hits(conn, Filters(month_start, month_end)) if caching else {}
        cache = {r.key: (r.calls, hits.get(r.key, 0)) for r in month_rows}
        period: dict[str, Decimal] = {}
        for name, conf in ctx.budgets.features.items():
            if conf.period in ("day", "month"):
                period[name] = (today if conf.period == "day" else month).get(name, Decimal(0))
            else:
                s, e = period_bounds(conf.period, now)
                got = reads.spend_by(conn, "feature", s, e, feature=name)
                period[name] = got[0].spend if got else Decimal(0)
        return period, today, month, cache

    period, today, month, cache = await ledger_call(ctx, query)
    found = await redis_call(live.flags(ctx.redis, ctx.settings.redis_prefix))
    t = ctx.budgets.thresholds
    return web.json_response({
        "now": _stamp(now), "thresholds": {"warn": money(t.warn), "cutoff": money(t.cutoff),
                                           "alert": money(t.alert)},
        "features": feature_rows(ctx.budgets, period, today, month, found, now, cache)})


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
    Route("POST", "/api/features/{feature}/disable", writes.disable, write=True),
    Route("POST", "/api/features/{feature}/enable", writes.enable, write=True),
    Route("POST", "/api/users/{user}/grant", writes.grant, write=True),
    Route("POST", "/api/users/{user}/unblock", writes.unblock, write=True),
)
