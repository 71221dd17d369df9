"""The dashboard's write actions: the kill switch, behind ``SPENDSTREAM_DASHBOARD_TOKEN``
given as a bearer token (403 without the setting, 401 without the right token)."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from spendstream import switch
from spendstream.dashboard.context import READ_ONLY, ApiError, ctx_of, redis_call


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
