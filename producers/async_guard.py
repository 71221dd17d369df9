"""The guard for asyncio apps: :class:`~spendstream.producers.guard.Guard`'s calls made
with redis.asyncio (``admit`` is awaited; ``record`` is not: emitting never blocks)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from spendstream.contract.event import UsageEvent
from spendstream.contract.keys import guard_keys, parse_flag
from spendstream.domain.admission import FlagSnapshot
from spendstream.domain.budgets import Budgets
from spendstream.producers.admission import Admission, EventSink
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


class AsyncGuard(GuardCore):
    """The same as :class:`Guard` for asyncio apps (redis.asyncio); ``admit`` is awaited,
    ``record`` is synchronous (emitting never blocks)."""

    def __init__(self, redis_client: str | aioredis.Redis, budgets: Budgets,
                 emitter: EventSink | None = None, *, timeout: float = 0.25,
                 **options: Any) -> None:
        super().__init__(budgets, emitter, **options)
        self.redis = (aioredis.Redis.from_url(redis_client, socket_timeout=timeout,
                                              socket_connect_timeout=timeout,
                                              retry=AsyncRetry(NoBackoff(), 0))
                      if isinstance(redis_client, str) else redis_client)
        self._script = self.redis.register_script(SCRIPT)
        self._reserve_script = self.redis.register_script(RESERVE)
        self._settle_script = self.redis.register_script(SETTLE)
        self._tokens_script = self.redis.register_script(SETTLE_TOKENS)
        self._settling: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, budgets: Budgets,
                      emitter: EventSink | None = None, **options: Any) -> AsyncGuard:
        """See :meth:`Guard.from_settings`."""
        return cls(settings.redis_url.get_secret_value(), budgets, emitter,
                   **{**redis_options(settings), **options})

    async def admit(self, user_id: str, feature: str, messages: list[dict[str, Any]], *,
                    model: str | None = None, max_tokens: int | None = None,
                    tier: str | None = None, reserve: bool = True) -> Admission:
        """See :meth:`Guard.admit`."""
        plan = self._plan(user_id, feature, model, max_tokens, tier)
        feature = plan.feature
        now = datetime.now(UTC)
        fitted = self._fit(plan, messages)
        limits = self._limits(user_id, plan, fitted)
        snapshot, blind, rated = await self._flags(user_id, feature, limits)
        self._check(user_id, feature, snapshot, now)
        if rated is not None:
            self._throttle(user_id, limits, RateDecision.from_reply(rated))
        elif limits and not blind:  # flags came from the cache: the limits still go to Redis
            blind = await self._rate(user_id, limits)
        reservation = self._reservation(user_id, plan, fitted, snapshot, now)
        deferred = None
        if reservation is not None and not reserve and not blind:
            deferred, reservation = reservation, None
        elif reservation is not None and (blind or await self._reserve(reservation, plan.model)):
            blind, reservation = True, None
        if blind:
            self.stats.failed_open += 1
        return self._admission(user_id, feature, plan, fitted, snapshot, now, reservation,
                               limits, deferred)

    async def reserve(self, admission: Admission) -> Admission:
        """See :meth:`Guard.reserve`."""
        held = admission.deferred
        if held is None:
            return admission
        if await self._reserve(held, admission.model):
            self.stats.failed_open += 1
            return replace(admission, deferred=None)
        return replace(admission, reservation=held, deferred=None)

    async def _flags(self, user_id: str, feature: str, limits: list[RateLimit]
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
                await self._script(keys=rate_keys, args=rate_args, client=pipe)
                values, rated = await pipe.execute()
            else:
                values, rated = await self.redis.mget(keys), None
        except (RedisError, OSError) as e:
            self._redis_failed(e)
            return self._stale(user_id, feature), True, None
        self._redis_ok()
        snapshot = FlagSnapshot(*map(parse_flag, values))
        self._remember(user_id, feature, snapshot)
        return snapshot, False, rated

    async def _rate(self, user_id: str, limits: list[RateLimit]) -> bool:
        """Take a slot of every limit; True when Redis did not answer."""
        if self._redis_skipped():
            self._redis_failed(None)
            return True
        rate_keys, rate_args = script_keys_args(limits)
        try:
            reply = await self._script(keys=rate_keys, args=rate_args)
        except (RedisError, OSError) as e:
            self._redis_failed(e)
            return True
        self._redis_ok()
        self._throttle(user_id, limits, RateDecision.from_reply(reply))
        return False

    async def _reserve(self, reservation: Reservation, model: str) -> bool:
        """See :meth:`Guard._reserve`."""
        if self._redis_skipped():
            self._redis_failed(None)
            return True
        keys, args = reservation.reserve_call(self.prefix, self._ttl())
        try:
            reply = await self._reserve_script(keys=keys, args=args)
        except (RedisError, OSError) as e:
            self._redis_failed(e)
            return True
        self._redis_ok()
        decision = ReserveDecision.from_reply(reply)
        if not decision.admitted:
            raise reservation_refusal(reservation, decision, model)
        return False

    def _settle(self, admission: Admission, event: UsageEvent) -> None:
        """``record`` is synchronous: the settlement runs as a task on the running loop
        (outside one, the reservation expires after its ttl); ``aclose`` awaits them."""
        call = self._settlement(admission, event)
        slot = admission.token_slot
        if call is None and slot is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        tokens = None if slot is None else (list(slot.keys),
                                            slot.settle_args(event.total_tokens))
        task = loop.create_task(self._settle_async(call, tokens))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle_async(self, call: tuple[list[str], list[Any]] | None,
                            tokens: tuple[list[str], list[Any]] | None) -> None:
        try:
            if call is not None:
                await self._settle_script(keys=call[0], args=call[1])
            if tokens is not None:
                await self._tokens_script(keys=tokens[0], args=tokens[1])
        except (RedisError, OSError):
            log.debug("settling a call failed; its entries expire by themselves",
                      exc_info=True)

    async def cache_get(self, key: str) -> bytes | None:
        """See :meth:`Guard.cache_get`."""
        if self._redis_skipped():
            return None
        try:
            value = await self.redis.get(key)
        except (RedisError, OSError) as e:
            self._redis_failed_quietly(e)
            return None
        return value if isinstance(value, bytes) else None

    def cache_put(self, key: str, value: bytes, ttl: float) -> None:
        """Store an answer (a task on the running loop; ``aclose`` awaits it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._cache_put(key, value, ttl))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _cache_put(self, key: str, value: bytes, ttl: float) -> None:
        try:
            await self.redis.set(key, value, px=max(int(ttl * 1000), 1))
        except (RedisError, OSError) as e:
            self._redis_failed_quietly(e)

    async def aclose(self) -> None:
        """Settle what is pending and close the Redis connections (the emitter is the
        caller's to close)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.redis.aclose()
