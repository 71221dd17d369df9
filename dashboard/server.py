"""``spendstream dashboard``: the aiohttp application (API, OpenAPI document, the page)
and running it."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from importlib.resources import files
from pathlib import Path

import redis.asyncio as aioredis
from aiohttp import web

from spendstream.dashboard import api
from spendstream.dashboard.alert_feed import AlertFeed
from spendstream.dashboard.ledger_reads import LedgerReader
from spendstream.dashboard.openapi import document
from spendstream.domain.budgets import Budgets
from spendstream.errors import SpendstreamError
from spendstream.settings import Settings

log = logging.getLogger("spendstream.dashboard")
DEFAULT_PORT = 8642
STATIC = Path(str(files("spendstream.dashboard") / "static"))


def build_app(settings: Settings, budgets: Budgets, *, alert_feed: bool = True
              ) -> web.Application:
    """The application: ``/`` (the page), ``/static/*``, ``/api/*``, ``/api/openapi.json``."""
    from spendstream.kafka_auth import kafka_client_kwargs

    app = web.Application(middlewares=[api.errors])
    url = settings.database_url
    ctx = api.Context(
        settings, budgets,
        aioredis.from_url(settings.redis_url.get_secret_value(), socket_timeout=3,
                          socket_connect_timeout=3),
        None if url is None else LedgerReader(url.get_secret_value()),
        AlertFeed(settings.bootstrap_servers, settings.alert_topic,
                  kafka_client_kwargs(settings)) if alert_feed else None)
    app[api.CTX] = ctx
    for route in api.ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    spec = document(_version())
    app.router.add_get("/api/openapi.json", lambda _: _json(spec))
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC)

    async def start(app: web.Application) -> None:
        if ctx.alerts is not None:
            await ctx.alerts.start()

    async def stop(app: web.Application) -> None:
        if ctx.alerts is not None:
            await ctx.alerts.stop()
        await ctx.redis.aclose()
        if ctx.ledger is not None:
            await asyncio.to_thread(ctx.ledger.close)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


async def _json(body: object) -> web.Response:
    return web.json_response(body)


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def _version() -> str:
    from spendstream import __version__

    return __version__


def run_dashboard(settings: Settings, budgets: Budgets, host: str, port: int) -> int:
    """Serve until Ctrl-C/SIGTERM; prints the URL first."""
    app = build_app(settings, budgets)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    mode = "writes allowed with the token" if settings.dashboard_token else (
        "read-only: set SPENDSTREAM_DASHBOARD_TOKEN to allow the kill switch")
    try:
        sock = listen(host, port)
    except OSError as e:
        raise SpendstreamError(_bind_error(e, host, port)) from None
    print(f"spendstream | dashboard: http://{shown}:{port}/ ({mode})", flush=True)
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening, before anything is printed: a port in
    use is told as such, not as a traceback from inside the server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_error(e: OSError, host: str, port: int) -> str:
    if e.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is in use (another dashboard, or `spendstream up`, "
                f"which serves one?); pick another with --port, e.g. --port {port + 1}"
                if port < 65535 else f"port {port} on {host} is in use; pick another with --port")
    if e.errno == errno.EACCES:
        return (f"not allowed to listen on port {port} (ports below 1024 need privileges); "
                "pick another with --port, e.g. --port 8642")
    return (f"cannot listen on {host}:{port} ({e.strerror or e}); check --host (an address "
            "of this machine, or 0.0.0.0 for all) and --port")
