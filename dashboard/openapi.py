"""The OpenAPI 3 document of the dashboard's API, built from :data:`api.ROUTES`."""

from __future__ import annotations

import re
from typing import Any

from spendstream.dashboard.api import ROUTES, Route

ERROR = {"description": "what went wrong and what to do",
         "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


SWITCH_BODY = {
    "reason": {"type": "string", "description": "shown to callers (disable)"},
    "ttl_seconds": {"type": "integer", "minimum": 1,
                    "description": "re-enable after this long (disable)"}}
GRANT_BODY = {
    "usd": {"type": "string", "description": "USD added to the daily budget, an exact decimal "
            "string such as \"1.50\", at most 6 decimal places (usd and/or tokens)"},
    "tokens": {"type": "integer", "minimum": 1,
               "description": "tokens added to the daily token budget"},
    "until": {"type": "string", "format": "date",
              "description": "last UTC day the grant applies (default: today; 31 days at most)"},
    "reason": {"type": "string", "description": "kept in the ledger and the alert"},
    "grant_id": {"type": "string", "description": "the grant's id (default: a new one); "
                 "sending the same id again is applied once"}}
BODIES = {"grant": GRANT_BODY,
          "unblock": {k: GRANT_BODY[k] for k in ("reason", "grant_id")}}
"""Request bodies of the write actions, by handler name (the kill switch's otherwise)."""


def _operation(route: Route) -> dict[str, Any]:
    doc = (route.handler.__doc__ or "").strip()
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)]
    params += [{"name": name, "in": "query", "required": False, "description": text,
                "schema": {"type": "string"}} for name, text in route.params]
    op: dict[str, Any] = {
        "operationId": route.handler.__name__, "summary": doc.splitlines()[0] if doc else "",
        "parameters": params,
        "responses": {"200": {"description": "OK (money as exact decimal strings, USD)",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                      "400": ERROR, "503": ERROR}}
    if route.write:
        op["security"] = [{"bearer": []}]
        body = BODIES.get(route.handler.__name__, SWITCH_BODY)
        op["requestBody"] = {"required": route.handler.__name__ == "grant", "content": {
            "application/json": {"schema": {"type": "object", "properties": body}}}}
        op["responses"]["401"] = ERROR
        op["responses"]["403"] = {**ERROR, "description": "read-only: "
                                  "SPENDSTREAM_DASHBOARD_TOKEN is not set"}
    return op


def document(version: str) -> dict[str, Any]:
    """The whole OpenAPI document."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    paths["/api/openapi.json"] = {"get": {"operationId": "openapi", "summary": "This document",
                                          "responses": {"200": {"description": "OK"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "spendstream dashboard API", "version": version,
                 "description": "Spend from the ledger, live flags and spend from Redis, "
                 "alerts from the alert topic, the kill switch and per-user grants. Writes need "
                 "SPENDSTREAM_DASHBOARD_TOKEN as a bearer token; without it the API is "
                 "read-only (403)."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error"],
                                  "properties": {"error": {"type": "string"}}}}},
    }
