"""The live state in Redis the dashboard shows: cutoff and warn flags, and users' spend
and cutoff of today. Key names and values are the contract's (:mod:`spendstream.contract.keys`)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from spendstream.contract import keys as k

SCAN_LIMIT = 5000
"""Flags listed at most: more than this many users cut off at once is a table for SQL."""


def _json(raw: bytes | str | None) -> dict[str, Any]:
    return k.parse_flag(raw) or {}


async def flags(client: aioredis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every active cutoff and warn flag: kind, scope, id, reason, spent, budget, unit,
    reset time (``window_end``, None for a switch without expiry) and seconds to live."""
    keys: list[bytes] = []
    for pattern in k.FLAG_PATTERNS:
        async for key in client.scan_iter(prefix + pattern, count=1000):
            keys.append(key)
            if len(keys) >= SCAN_LIMIT:
                break
    keys.sort()
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
        pipe.ttl(key)
    replies = await pipe.execute() if keys else []
    out = []
    for i, key in enumerate(keys):
        raw, ttl = replies[2 * i], replies[2 * i + 1]
        if raw is None:  # expired between SCAN and GET
            continue
        name = key.decode()[len(prefix):]
        kind, _, rest = name.partition(":")
        scope, _, subject = rest.partition(":")
        value = _json(raw)
        out.append({"key": name, "kind": kind, "scope": scope,
                    "id": value.get("id", subject or scope), "reason": value.get("reason"),
                    "level": value.get("level", kind), "spent": value.get("spent"),
                    "budget": value.get("budget"), "unit": value.get("unit"),
                    "reset_at": value.get("window_end"),
                    "ttl_seconds": ttl if isinstance(ttl, int) and ttl >= 0 else None})
    return out


async def users_now(client: aioredis.Redis, prefix: str, users: list[str]
                    ) -> dict[str, tuple[dict[str, Any], bool]]:
    """Each user's live spend value of today (empty when they have none) and whether they
    are cut off now, in one MGET."""
    if not users:
        return {}
    names = [prefix + k.spend_user(u) for u in users] + [prefix + k.cutoff_user(u)
                                                          for u in users]
    values = await client.mget(names)
    n = len(users)
    return {u: (_json(values[i]), values[n + i] is not None) for i, u in enumerate(users)}
