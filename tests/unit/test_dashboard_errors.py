"""The dashboard's API answers JSON for aiohttp's own errors too (an unknown route, a
method a route does not take), so a client parses every answer the same way. No service
is asked: these answers come before any handler runs."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from spendstream.dashboard.server import build_app
from spendstream.domain.budgets import Budgets
from spendstream.settings import load_settings


async def test_api_errors_from_aiohttp_are_json() -> None:
    settings = load_settings(redis_url="redis://127.0.0.1:1/0")
    client = TestClient(TestServer(build_app(settings, Budgets(), alert_feed=False)))
    await client.start_server()
    try:
        r = await client.get("/api/users/x/grant")
        assert r.status == 405 and r.content_type == "application/json"
        assert r.headers["Allow"] == "POST"
        assert await r.json() == {"error": "GET is not allowed on /api/users/x/grant; use "
                                  "POST (see /api/openapi.json)"}
        r = await client.get("/api/nosuch")
        assert r.status == 404 and r.content_type == "application/json"
        assert await r.json() == {"error": "no API route /api/nosuch; the routes are in "
                                  "/api/openapi.json"}
        r = await client.get("/nosuch")  # the page's own 404 stays aiohttp's
        assert r.status == 404 and r.content_type == "text/plain"
    finally:
        await client.close()
