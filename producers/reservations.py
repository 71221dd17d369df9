"""Pre-call reservations: hold a call's worst-case cost in Redis until it is recorded.

Flags are written after spend is counted, so at a budget's edge every call already in
flight would pass. With ``reservations:`` in the budgets file, ``admit`` prices the call's
worst case (the prompt's counted tokens plus ``max_tokens`` of output, at the model's
price, overrides first) and one Lua script, atomic in Redis, refuses it when

    spent (the worker's live spend key) + reserved (calls in flight) + this estimate

would pass the user's daily USD budget or ``global.daily_usd``; otherwise it reserves the
estimate for the user and globally. ``record`` settles the reservation to the call's
actual cost, held for ``reservations.hold`` seconds (until the worker's spend key includes
the call), then it expires; a reservation never recorded (the process died) expires after
``reservations.ttl``. Amounts are integer nano-dollars in Redis (exact, no floats).

Each scope keeps a hash (reservation id → amount, and the running total) and a sorted set
of expiry times; each call prunes the expired entries first, so the total stays exact.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

from spendstream.contract import keys
from spendstream.contract.event import UsageEvent
from spendstream.domain.budgets import Budgets, Limit
from spendstream.domain.pricing import Pricer
from spendstream.errors import BudgetExceeded, ConfigError

NANO = Decimal(1_000_000_000)
UNCAPPED_OUTPUT = 4096
"""Output tokens assumed for a call with no ``max_tokens`` and no feature cap."""

_LIB = """
local TOTAL = '_total'
local function prune(hash, exp, now)
  local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
  for _, id in ipairs(gone) do
    local amount = tonumber(redis.call('HGET', hash, id) or '0')
    redis.call('HDEL', hash, id)
    redis.call('HINCRBY', hash, TOTAL, string.format('%d', -amount))
    redis.call('ZREM', exp, id)
  end
end
local function nano(value)
  if type(value) == 'number' then return math.floor(value * 1000000000) end
  if type(value) ~= 'string' then return 0 end
  local whole, frac = string.match(value, '^(%d*)%.?(%d*)$')
  if whole == nil then return 0 end
  frac = string.sub(frac .. '000000000', 1, 9)
  return tonumber(whole ~= '' and whole or '0') * 1000000000 + tonumber(frac)
end
local function spent(key)
  local raw = redis.call('GET', key)
  if not raw then return 0 end
  local ok, v = pcall(cjson.decode, raw)
  if not ok or type(v) ~= 'table' then return 0 end
  return nano(v['spent_usd'])
end
local function int(x) return string.format('%d', x) end
local function keep(hash, exp, id, amount, expires, ttl_ms)
  local old = tonumber(redis.call('HGET', hash, id) or '0')
  redis.call('HSET', hash, id, int(amount))
  redis.call('HINCRBY', hash, TOTAL, int(amount - old))
  redis.call('ZADD', exp, expires, id)
  if redis.call('PTTL', hash) < ttl_ms then
    redis.call('PEXPIRE', hash, ttl_ms)
    redis.call('PEXPIRE', exp, ttl_ms)
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

RESERVE = _LIB + """
local id, amount = ARGV[1], tonumber(ARGV[2])
local ttl = tonumber(ARGV[5])
for scope = 1, 2 do
  local budget = tonumber(ARGV[2 + scope])
  local base = (scope - 1) * 3
  if budget >= 0 then
    prune(KEYS[base + 1], KEYS[base + 2], now)
    local reserved = tonumber(redis.call('HGET', KEYS[base + 1], TOTAL) or '0')
    local used = spent(KEYS[base + 3])
    if used + reserved + amount > budget then
      return {0, scope, used, reserved, now}
    end
  end
end
for scope = 1, 2 do
  local base = (scope - 1) * 3
  if tonumber(ARGV[2 + scope]) >= 0 then
    keep(KEYS[base + 1], KEYS[base + 2], id, amount, now + ttl, math.ceil(ttl / 1000))
  end
end
return {1, 0, 0, 0, now}
"""
"""KEYS = user hash, user expiries, user spend key, global hash, global expiries, global
daily spend key; ARGV = id, estimate (nano-USD), user budget, global budget (nano-USD, -1:
none), ttl (µs). Returns {admitted, refusing scope (1 user, 2 global), spent, reserved,
Redis's now in µs}."""

SETTLE = _LIB + """
local id, amount, hold = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for base = 0, 2, 2 do
  local hash, exp = KEYS[base + 1], KEYS[base + 2]
  if redis.call('HEXISTS', hash, id) == 1 then
    if amount > 0 then
      keep(hash, exp, id, amount, now + hold, math.ceil(hold / 1000))
    else
      redis.call('ZADD', exp, now, id)
    end
    prune(hash, exp, now)
  end
end
return 1
"""
"""KEYS = user hash, user expiries, global hash, global expiries; ARGV = id, the actual
cost (nano-USD; 0 releases), hold (µs)."""


def to_nano(usd: Decimal) -> int:
    """USD as integer nano-dollars, rounded up (a reservation never under-holds)."""
    return int((usd * NANO).to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True, slots=True)
class Reservation:
    """One call's hold: its id, amount and the keys of the scopes it holds in."""

    id: str
    estimate: Decimal
    user_id: str
    user_budget: Decimal | None
    global_budget: Decimal | None

    @classmethod
    def new(cls, user_id: str, estimate: Decimal, user_budget: Decimal | None,
            global_budget: Decimal | None) -> Reservation:
        """A fresh reservation (the id is unique per call)."""
        return cls(uuid.uuid4().hex, estimate, user_id, user_budget, global_budget)

    def reserve_call(self, prefix: str, ttl: float) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of :data:`RESERVE`."""
        u, g = self._hashes(prefix)
        return ([*u, prefix + keys.spend_user(self.user_id), *g,
                 prefix + keys.spend_global("day")],
                [self.id, to_nano(self.estimate), _budget(self.user_budget),
                 _budget(self.global_budget), int(ttl * 1_000_000)])

    def settle_call(self, prefix: str, actual: Decimal, hold: float
                    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of :data:`SETTLE`: ``actual`` 0 releases the reservation."""
        u, g = self._hashes(prefix)
        return [*u, *g], [self.id, to_nano(actual), int(hold * 1_000_000)]

    def _hashes(self, prefix: str) -> tuple[list[str], list[str]]:
        return ([prefix + keys.reserved_user(self.user_id),
                 prefix + keys.reserved_user_expiry(self.user_id)],
                [prefix + keys.RESERVED_GLOBAL, prefix + keys.RESERVED_GLOBAL_EXPIRY])


def _budget(value: Decimal | None) -> int:
    return -1 if value is None else to_nano(value)


@dataclass(frozen=True, slots=True)
class ReserveDecision:
    """The reserve script's answer."""

    admitted: bool
    scope: str
    """``user`` or ``global``: which budget refused (meaningless when admitted)."""
    spent: Decimal
    reserved: Decimal
    now: datetime

    @classmethod
    def from_reply(cls, reply: list[Any]) -> ReserveDecision:
        """Decode :data:`RESERVE`'s reply."""
        admitted, scope, spent, reserved, now_us = (int(x) for x in reply)
        return cls(bool(admitted), "global" if scope == 2 else "user",
                   Decimal(spent) / NANO, Decimal(reserved) / NANO,
                   datetime.fromtimestamp(now_us / 1_000_000, tz=UTC))

    @property
    def resets_at(self) -> datetime:
        """The end of the current UTC day (when both daily budgets reset)."""
        day = self.now.replace(hour=0, minute=0, second=0, microsecond=0)
        return day + timedelta(days=1)


def refusal(reservation: Reservation, decision: ReserveDecision, model: str
            ) -> BudgetExceeded:
    """The error for a call whose worst case does not fit what is left today."""
    user = decision.scope == "user"
    budget = reservation.user_budget if user else reservation.global_budget
    who = f"daily budget of user {reservation.user_id}" if user else "global daily budget"
    return BudgetExceeded(
        f"{who}: this call may cost up to ${reservation.estimate} (its prompt and max_tokens "
        f"at {model}'s price), and ${decision.spent} is spent and ${decision.reserved} "
        f"reserved by calls in flight, of ${budget}: retry after "
        f"{decision.resets_at:%Y-%m-%d %H:%M} UTC, or lower max_tokens",
        reason=f"{who} (with the calls in flight)", spent=decision.spent + decision.reserved,
        budget=budget, unit="usd", resets_at=decision.resets_at,
        scope=decision.scope, subject=reservation.user_id if user else "daily_cap")


class Reserver:
    """What the guard needs to reserve and settle, from the budgets file (no I/O here)."""

    def __init__(self, budgets: Budgets) -> None:
        conf = budgets.reservations
        if conf is None:
            raise ValueError("the budgets file has no reservations: section")
        self.ttl = conf.ttl
        self.hold = conf.hold
        self.global_budget = budgets.global_.daily_usd
        self.pricer = Pricer(budgets.prices)

    def reservation(self, user_id: str, model: str, tier: Limit | None, input_tokens: int,
                    max_tokens: int | None) -> Reservation | None:
        """The call's reservation; ``None`` when neither budget applies."""
        user_budget = tier.usd if tier is not None else None
        if user_budget is None and self.global_budget is None:
            return None
        output = max_tokens if max_tokens is not None else UNCAPPED_OUTPUT
        estimate = self.pricer.price(model, None, input_tokens, output)
        if estimate is None:
            raise ConfigError(
                f"model {model!r} has no price, so the guard cannot reserve the cost of its "
                "calls: add it under prices: in the budgets file (USD per 1M tokens)")
        return Reservation.new(user_id, estimate, user_budget, self.global_budget)

    def actual(self, reservation: Reservation, event: UsageEvent) -> Decimal:
        """What the recorded call cost (failed calls nothing; an unpriced model keeps its
        estimate)."""
        if not event.ok:
            return Decimal(0)
        cost = self.pricer.price(event.model, event.provider, event.input_tokens,
                                 event.output_tokens, event.cached_input_tokens)
        return reservation.estimate if cost is None else cost
