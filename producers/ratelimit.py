"""A per-user request rate limit that holds across replicas: one Lua script in Redis.

A sliding log: a sorted set per user of the admitted requests' times (Redis's own clock,
so replicas with skewed clocks agree). The script drops entries older than the window,
admits only while fewer than ``limit`` remain, and sets the key to expire with the window.
It runs atomically in Redis, so N replicas share one limit instead of N times it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from spendstream.contract import keys

SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return {1, n + 1, 0, now}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, n, tonumber(oldest[2]) + window - now, now}
"""
"""KEYS[1] = the user's key; ARGV = limit, window (µs), a unique member.
Returns {admitted, count, µs until a slot frees, Redis's now in µs}."""


def rate_key(prefix: str, user_id: str) -> str:
    """The sorted set holding a user's recent requests."""
    return prefix + keys.rate_user(user_id)


def script_args(limit: int, window_seconds: float) -> list[Any]:
    """ARGV for :data:`SCRIPT`; the member is unique per request."""
    return [limit, int(window_seconds * 1_000_000), uuid.uuid4().hex]


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The script's answer: admitted or not, the count in the window, when to retry."""

    admitted: bool
    count: int
    retry_at: datetime

    @classmethod
    def from_reply(cls, reply: list[Any]) -> RateDecision:
        """Decode the script's reply."""
        admitted, count, wait_us, now_us = (int(x) for x in reply)
        now = datetime.fromtimestamp(now_us / 1_000_000, tz=UTC)
        return cls(bool(admitted), count, now + timedelta(microseconds=max(wait_us, 0)))
