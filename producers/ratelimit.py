"""Per-user call limits that hold across replicas: one Lua script in Redis.

Each limit is a sliding log: a sorted set of the admitted calls' times (Redis's own clock,
so replicas with skewed clocks agree), each entry weighing 1 (requests per minute) or the
call's tokens (tokens per minute: the prompt plus the ``max_tokens`` granted, the worst
case known before the call, corrected by ``record`` to what the call used). The script
checks every limit that applies to a call (the feature's and the tier's, requests and
tokens, and the guard's global per-user rate) and takes a slot in all of them or in none,
atomically, so N replicas share one limit instead of N times it. A refusal names the
limit and when enough of its window frees.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from spendstream.contract import keys

WINDOW_US = 60_000_000
"""The window of every limit: one minute, in µs."""

SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local member = ARGV[2]
local function weight(entry)
  return tonumber(string.match(entry, ':(%d+)$')) or 1
end
for i = 1, #KEYS do
  local limit = tonumber(ARGV[1 + 2 * i])
  local need = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local entries = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
  local used = 0
  for j = 1, #entries, 2 do used = used + weight(entries[j]) end
  if used + need > limit then
    local freed, at = 0, now
    for j = 1, #entries, 2 do
      freed = freed + weight(entries[j])
      at = tonumber(entries[j + 1]) + window
      if used - freed + need <= limit then break end
    end
    return {0, i, used, at - now, now}
  end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, member .. ':' .. ARGV[2 + 2 * i])
  redis.call('PEXPIRE', KEYS[i], math.ceil(window / 1000))
end
return {1, 0, 0, 0, now}
"""
"""KEYS = the limits' sorted sets; ARGV = window (µs), a unique id, then limit and weight
of each key in order. Returns {admitted, the 1-based index of the limit that refused (0),
its use in the window, µs until enough of it frees, Redis's now in µs}."""

Unit = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One limit that applies to a call: its prefixed key, size, and the call's weight."""

    key: str
    limit: int
    weight: int
    unit: Unit
    scope: str
    """``feature``, ``tier`` or ``user`` (the guard's ``rate_limit_per_minute``)."""
    subject: str
    member: str
    """The call's entry in the sorted set (one id per call, shared by its limits)."""

    def describe(self) -> str:
        """``feature chat's limit of 20 requests per minute``."""
        owner = "the per-user" if self.scope == "user" else f"{self.scope} {self.subject}'s"
        return f"{owner} limit of {self.limit} {self.unit} per minute"


def user_limits(prefix: str, user_id: str, feature: str, tier: str, *,
                feature_rates: Any = None, tier_rates: Any = None,
                per_user_rpm: int | None = None, tokens: int = 0) -> list[RateLimit]:
    """The limits that apply to one call of ``user_id``: ``feature_rates`` and
    ``tier_rates`` are the budgets file's ``limits`` (``rpm``/``tpm``, or ``None``);
    ``tokens`` is what the call may use (prompt plus ``max_tokens``)."""
    out: list[RateLimit] = []
    member = uuid.uuid4().hex
    if per_user_rpm is not None:
        out.append(RateLimit(prefix + keys.rate_user(user_id), per_user_rpm, 1, "requests",
                             "user", user_id, member))
    for scope, subject, rates in (("feature", feature, feature_rates),
                                  ("tier", tier, tier_rates)):
        if rates is None:
            continue
        def key(unit: Unit, scope: str = scope) -> str:
            return prefix + (keys.rate_feature(user_id, feature, unit) if scope == "feature"
                             else keys.rate_tier(user_id, unit))
        if rates.rpm is not None:
            out.append(RateLimit(key("requests"), rates.rpm, 1, "requests", scope, subject,
                                 member))
        if rates.tpm is not None:
            out.append(RateLimit(key("tokens"), rates.tpm, max(tokens, 1), "tokens", scope,
                                 subject, member))
    return out


def script_keys_args(limits: Sequence[RateLimit]) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of :data:`SCRIPT` for ``limits`` (at least one)."""
    args: list[Any] = [WINDOW_US, limits[0].member]
    for limit in limits:
        args += [limit.limit, limit.weight]
    return [limit.key for limit in limits], args


SETTLE_TOKENS = """
for i = 1, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], ARGV[1] .. ':' .. ARGV[2])
  if score then
    redis.call('ZREM', KEYS[i], ARGV[1] .. ':' .. ARGV[2])
    redis.call('ZADD', KEYS[i], score, ARGV[1] .. ':' .. ARGV[3])
  end
end
return 1
"""
"""KEYS = a call's tokens-per-minute sets; ARGV = its member, the tokens it took at admit,
the tokens it used. The entry keeps its time; only its weight changes."""


@dataclass(frozen=True, slots=True)
class TokenSlot:
    """A call's entries in the tokens-per-minute limits, corrected by ``record``: admit
    counts the worst case (prompt plus ``max_tokens``), the answer usually uses less."""

    keys: tuple[str, ...]
    member: str
    weight: int

    @classmethod
    def of(cls, limits: Sequence[RateLimit]) -> TokenSlot | None:
        """The tokens limits' slot of a call, ``None`` without such limits."""
        tokens = [limit for limit in limits if limit.unit == "tokens"]
        if not tokens:
            return None
        return cls(tuple(limit.key for limit in tokens), tokens[0].member, tokens[0].weight)

    def settle_args(self, used: int) -> list[Any]:
        """ARGV of :data:`SETTLE_TOKENS` for a call that used ``used`` tokens."""
        return [self.member, self.weight, max(used, 0)]


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The script's answer: admitted, or which limit refused, its use and when it frees."""

    admitted: bool
    index: int
    """0-based index of the refusing limit (meaningless when admitted)."""
    used: int
    retry_at: datetime

    @classmethod
    def from_reply(cls, reply: list[Any]) -> RateDecision:
        """Decode the script's reply."""
        admitted, index, used, wait_us, now_us = (int(x) for x in reply)
        now = datetime.fromtimestamp(now_us / 1_000_000, tz=UTC)
        return cls(bool(admitted), index - 1, used,
                   now + timedelta(microseconds=max(wait_us, 0)))
