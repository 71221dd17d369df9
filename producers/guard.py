"""The call-site guard: bound every model call before it happens, meter it after.

``admit`` reads the cutoff and warn flags of (user, feature, global) and the user's live
spend in one MGET, cached for ``cache_ttl`` seconds; refuses with :class:`BudgetExceeded`,
:class:`FeatureDisabled` or :class:`Throttled`; fits the prompt into the feature's input
budget; applies the per-user rate limit (one Lua script, atomic across replicas); and picks
the model and ``max_tokens``. ``record`` builds the usage event and emits it; it prices
nothing (the worker does).

When Redis cannot be reached the guard fails open by default (a warning once per outage,
``stats.failed_open`` counts the calls let through, flags already cached keep applying) or,
with ``fail_closed=True``, raises :class:`ServiceUnavailable`. Socket timeouts are short,
and after a failure Redis is not retried for ``retry_interval`` seconds, so an outage costs
the call path nothing.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from spendstream.contract.event import UsageEvent
from spendstream.contract.keys import guard_keys, parse_flag
from spendstream.domain.admission import FlagSnapshot
from spendstream.domain.budgets import Budgets
from spendstream.producers.admission import Admission, EventSink, GuardStats
from spendstream.producers.async_guard import AsyncGuard
from spendstream.producers.guard_core import GuardCore, redis_options
from spendstream.producers.ratelimit import (
    SCRIPT,
    SETTLE_TOKENS,
    RateDecision,
    RateLimit,
    script_keys_args,
)
from spendstream.producers.reservations import (
    RESERVE,
    SETTLE,
    Reservation,
    ReserveDecision,
)
from spendstream.producers.reservations import refusal as reservation_refusal

if TYPE_CHECKING:
    from spendstream.settings import Settings

log = logging.getLogger("spendstream.guard")

class Guard(GuardCore):
    """Synchronous guard (redis-py); see :class:`AsyncGuard` for asyncio apps.

    ``redis_client`` is a URL or a ``redis.Redis``; a URL gets short timeouts
    (``timeout`` seconds) and no retries, so an unreachable Redis never holds a call.
    """

    def __init__(self, redis_client: str | redis.Redis, budgets: Budgets,
                 emitter: EventSink | None = None, *, timeout: float = 0.25,
                 **options: Any) -> None:
        super().__init__(budgets, emitter, **options)
        self.redis = (redis.Redis.from_url(redis_client, socket_timeout=timeout,
                                           socket_connect_timeout=timeout,
                                           retry=Retry(NoBackoff(), 0))
                      if isinstance(redis_client, str) else redis_client)
        self._script = self.redis.register_script(SCRIPT)
        self._reserve_script = self.redis.register_script(RESERVE)
        self._settle_script = self.redis.register_script(SETTLE)
        self._tokens_script = self.redis.register_script(SETTLE_TOKENS)

    @classmethod
    def from_settings(cls, settings: Settings, budgets: Budgets,
                      emitter: EventSink | None = None, **options: Any) -> Guard:
        """A guard configured by the process settings (URL, prefix, ``SPENDSTREAM_GUARD_*``)."""
        return cls(settings.redis_url.get_secret_value(), budgets, emitter,
                   **{**redis_options(settings), **options})

    def admit(self, user_id: str, feature: str, messages: list[dict[str, Any]], *,
              model: str | None = None, max_tokens: int | None = None,
              tier: str | None = None, reserve: bool = True) -> Admission:
        """Check flags, rate limit and input budget; raise BudgetExceeded, FeatureDisabled
        or Throttled (all SpendstreamError) or return what the call may use.

        ``reserve=False`` leaves the worst-case hold to :meth:`reserve` (the wrappers call
        it after the response cache missed: a cached answer costs nothing to hold)."""
        plan = self._plan(user_id, feature, model, max_tokens, tier)
        feature = plan.feature
        now = datetime.now(UTC)
        fitted = self._fit(plan, messages)
        limits = self._limits(user_id, plan, fitted)
        snapshot, blind, rated = self._flags(user_id, feature, limits)
        self._check(user_id, feature, snapshot, now)
        if rated is not None:
            self._throttle(user_id, limits, RateDecision.from_reply(rated))
        elif limits and not blind:  # flags came from the cache: the limits still go to Redis
            blind = self._rate(user_id, limits)
        reservation = self._reservation(user_id, plan, fitted, snapshot, now)
        deferred = None
        if reservation is not None and not reserve and not blind:
            deferred, reservation = reservation, None
        elif reservation is not None and (blind or self._reserve(reservation, plan.model)):
            blind, reservation = True, None
        if blind:
            self.stats.failed_open += 1
        return self._admission(user_id, feature, plan, fitted, snapshot, now, reservation,
                               limits, deferred)

    def reserve(self, admission: Admission) -> Admission:
        """Hold the worst case ``admit(..., reserve=False)`` left, or raise BudgetExceeded;
        the admission to record with (unchanged when nothing was deferred, or Redis did not
        answer and the call goes on unreserved)."""
        held = admission.deferred
        if held is None:
            return admission
        if self._reserve(held, admission.model):
            self.stats.failed_open += 1
            return replace(admission, deferred=None)
        return replace(admission, reservation=held, deferred=None)

    def _flags(self, user_id: str, feature: str, limits: list[RateLimit]
               ) -> tuple[FlagSnapshot, bool, Any]:
        """The flags; True when Redis did not answer (the stale snapshot stands in); and,
        when there are ``limits`` and Redis was asked, the rate script's reply from the
        same round trip (one pipeline: the MGET and the limits cost one round trip)."""
        snapshot = self._cached(user_id, feature)
        if snapshot is not None:
            return snapshot, False, None
        if self._redis_skipped():
            self._redis_failed(None)
            return self._stale(user_id, feature), True, None
        keys = guard_keys(self.prefix, user_id, feature)
        try:
            if limits:
                pipe = self.redis.pipeline(transaction=False)
                pipe.mget(keys)
                rate_keys, rate_args = script_keys_args(limits)
                self._script(keys=rate_keys, args=rate_args, client=pipe)
                values, rated = pipe.execute()
            else:
                values, rated = self.redis.mget(keys), None
        except (RedisError, OSError) as e:
            self._redis_failed(e)
            return self._stale(user_id, feature), True, None
        self._redis_ok()
        snapshot = FlagSnapshot(*map(parse_flag, values))
        self._remember(user_id, feature, snapshot)
        return snapshot, False, rated

    def _rate(self, user_id: str, limits: list[RateLimit]) -> bool:
        """Take a slot of every limit; True when Redis did not answer."""
        if self._redis_skipped():
            self._redis_failed(None)
            return True
        rate_keys, rate_args = script_keys_args(limits)
        try:
            reply = self._script(keys=rate_keys, args=rate_args)
        except (RedisError, OSError) as e:
            self._redis_failed(e)
            return True
        self._redis_ok()
        self._throttle(user_id, limits, RateDecision.from_reply(reply))
        return False

    def _reserve(self, reservation: Reservation, model: str) -> bool:
        """Hold the call's worst case or raise BudgetExceeded; True when Redis did not
        answer (the call goes on unreserved, or ServiceUnavailable when failing closed)."""
        if self._redis_skipped():
            self._redis_failed(None)
            return True
        keys, args = reservation.reserve_call(self.prefix, self._ttl())
        try:
            reply = self._reserve_script(keys=keys, args=args)
        except (RedisError, OSError) as e:
            self._redis_failed(e)
            return True
        self._redis_ok()
        decision = ReserveDecision.from_reply(reply)
        if not decision.admitted:
            raise reservation_refusal(reservation, decision, model)
        return False

    def _settle(self, admission: Admission, event: UsageEvent) -> None:
        call = self._settlement(admission, event)
        slot = admission.token_slot
        try:
            if call is not None:
                self._settle_script(keys=call[0], args=call[1])
            if slot is not None:
                self._tokens_script(keys=list(slot.keys),
                                    args=slot.settle_args(event.total_tokens))
        except (RedisError, OSError):
            log.debug("settling a call failed; its entries expire by themselves",
                      exc_info=True)

    def cache_get(self, key: str) -> bytes | None:
        """A cached answer, or ``None`` (absent, or Redis did not answer: call the model)."""
        if self._redis_skipped():
            return None
        try:
            value = self.redis.get(key)
        except (RedisError, OSError) as e:
            self._redis_failed_quietly(e)
            return None
        return value if isinstance(value, bytes) else None

    def cache_put(self, key: str, value: bytes, ttl: float) -> None:
        """Store an answer for ``ttl`` seconds; a failure only costs the next hit."""
        try:
            self.redis.set(key, value, px=max(int(ttl * 1000), 1))
        except (RedisError, OSError) as e:
            self._redis_failed_quietly(e)

    def close(self) -> None:
        """Close the Redis connections (the emitter is the caller's to close)."""
        self.redis.close()


__all__ = ["Admission", "AsyncGuard", "EventSink", "Guard", "GuardStats"]
