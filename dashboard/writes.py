"""The dashboard's write actions: the kill switch and per-user grants, behind
``SPENDSTREAM_DASHBOARD_TOKEN`` given as a bearer token (403 without the setting, 401
without the right token)."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from spendstream import switch
from spendstream.contract import control
from spendstream.dashboard.context import READ_ONLY, ApiError, ctx_of, redis_call
from spendstream.errors import ServiceUnavailable
from spendstream.grant import describe, no_effect, send_control
from spendstream.kafka_auth import kafka_client_kwargs


def _authorise(request: web.Request) -> None:
    token = ctx_of(request).settings.dashboard_token
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
    ctx = ctx_of(request)
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
    await redis_call(ctx.redis.set(w.key, w.raw, ex=w.ttl))
    return web.json_response({"feature": feature, "disabled": True, "flag": w.value})


async def enable(request: web.Request) -> web.Response:
    """Undo a kill switch (or a hard budget cutoff): delete the feature's cutoff flag."""
    _authorise(request)
    ctx = ctx_of(request)
    feature = request.match_info["feature"]
    removed = await redis_call(ctx.redis.delete(switch.switch_key(ctx.settings.redis_prefix,
                                                              feature)))
    return web.json_response({"feature": feature, "disabled": False,
                              "was_disabled": bool(removed)})


def _text(body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name) or ""
    if not isinstance(value, str) or len(value) > limit:
        raise ApiError(400, f"{name} must be text of at most {limit} characters")
    return value


async def grant(request: web.Request) -> web.Response:
    """Grant: raise a user's daily budget today (or through ``until``) by ``usd``/``tokens``.

    Body ``{"usd": "1", "tokens": 20000, "until": "2026-11-30", "reason": "...",
    "grant_id": "..."}`` (``usd`` and/or ``tokens``); sent as a control record the worker
    applies in order with the user's events, once per ``grant_id``.
    """
    return await _send(request, "grant")


async def unblock(request: web.Request) -> web.Response:
    """Unblock: clear a user's cutoff today (the worker grants their daily budget back).

    Body ``{"reason": "...", "grant_id": "..."}`` (both optional).
    """
    return await _send(request, "unblock")


async def _send(request: web.Request, kind: str) -> web.Response:
    _authorise(request)
    ctx = ctx_of(request)
    user = request.match_info["user"]
    body = await _body(request)
    reason = _text(body, "reason", 500)
    grant_id = body.get("grant_id")
    if grant_id is not None and not isinstance(grant_id, str):
        raise ApiError(400, "grant_id must be text (or absent: a new id)")
    try:
        if kind == "unblock":
            unknown = set(body) - {"reason", "grant_id"}
            if unknown:
                raise ValueError(f"an unblock takes only reason and grant_id, not "
                                 f"{', '.join(sorted(unknown))}")
            record = control.unblock(user, reason=reason, by="dashboard", grant_id=grant_id,
                                     ts=ctx.clock())
        else:
            unknown = set(body) - {"usd", "tokens", "until", "reason", "grant_id"}
            if unknown:
                raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
            record = control.grant(user, body.get("usd"), body.get("tokens"),
                                   body.get("until"), reason=reason, by="dashboard",
                                   grant_id=grant_id, ts=ctx.clock())
    except ValueError as e:
        raise ApiError(400, str(e)) from e
    s = ctx.settings
    try:
        partition, offset = await send_control(s.bootstrap_servers, s.topic, record,
                                               kafka_client_kwargs(s))
    except ServiceUnavailable as e:
        raise ApiError(503, str(e)) from e
    return web.json_response({"user": user, "control": record.model_dump(
        mode="json", by_alias=True, exclude_none=True), "partition": partition,
        "offset": offset, "message": describe(record),
        "warning": no_effect(record, ctx.budgets)})
