"""What every handler of the dashboard's API shares: its context (settings, budgets,
Redis, the ledger, the alert feed), the error it answers with, and the calls to Redis and
the ledger that turn their failures into that error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from spendstream.dashboard import ledger_reads as reads
from spendstream.dashboard.alert_feed import AlertFeed
from spendstream.domain.budgets import Budgets
from spendstream.errors import SpendstreamError
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


def ctx_of(request: web.Request) -> Context:
    """The application's context."""
    return request.app[CTX]


async def ledger_call(ctx: Context, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(connection)`` in a thread; 503 when there is no ledger or it fails."""
    if ctx.ledger is None:
        raise ApiError(503, "no spend ledger: set SPENDSTREAM_DATABASE_URL for the dashboard "
                       "(the worker's ledger database; `spendstream up` prints it)")
    try:
        return await asyncio.to_thread(ctx.ledger.call, fn)
    except SpendstreamError as e:
        raise ApiError(503, str(e)) from e


async def redis_call(awaitable: Awaitable[Any]) -> Any:
    """Await a Redis command; 503 saying what to check when Redis is unreachable."""
    try:
        return await awaitable
    except (RedisError, OSError) as e:
        raise ApiError(503, f"Redis unreachable ({type(e).__name__}); check "
                       "SPENDSTREAM_REDIS_URL") from e


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn :class:`ApiError` into ``{"error": message}`` with its status, and so aiohttp's
    own errors under ``/api/`` (an unknown route, a method a route does not take): an API
    client parses every answer as JSON."""
    try:
        return await handler(request)
    except ApiError as e:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return web.json_response({"error": str(e)}, status=e.status, headers=headers)
    except web.HTTPException as e:
        if e.status < 400 or not request.path.startswith("/api/"):
            raise
        allow = e.headers.get("Allow")
        return web.json_response({"error": _http_error(request, e.status, e.reason, allow)},
                                 status=e.status, headers={"Allow": allow} if allow else None)


def _http_error(request: web.Request, status: int, reason: str, allow: str | None) -> str:
    if status == 405:
        return (f"{request.method} is not allowed on {request.path}; use "
                f"{allow or 'another method'} (see /api/openapi.json)")
    if status == 404:
        return f"no API route {request.path}; the routes are in /api/openapi.json"
    return f"{reason} ({request.method} {request.path})"
