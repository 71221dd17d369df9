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
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.retry import Retry

from spendstream.contract.event import UsageEvent
from spendstream.contract.keys import guard_keys, parse_flag
from spendstream.domain.admission import (
    FlagSnapshot,
    choose_max_tokens,
    choose_model,
    refusal,
)
from spendstream.domain.budgets import Budgets, Feature
from spendstream.errors import ServiceUnavailable, Throttled
from spendstream.producers.ratelimit import SCRIPT, RateDecision, rate_key, script_args
from spendstream.producers.trim import Fitted, fit

if TYPE_CHECKING:
    from spendstream.settings import Settings

log = logging.getLogger("spendstream.guard")

_MAX_CACHE = 100_000
"""(user, feature) pairs cached; the cache is cleared when full, so junk ids cannot grow it."""


@dataclass(frozen=True, slots=True)
class Admission:
    """What the guard allows for one call: the (maybe trimmed) messages, model and cap."""

    user_id: str
    feature: str
    model: str
    max_tokens: int | None
    messages: list[dict[str, Any]]
    input_tokens_local: int
    """The local tiktoken count of ``messages`` (chat overhead included)."""
    input_exact: bool
    """False when the count is an approximation (encoding unavailable offline)."""
    trimmed: bool = False
    warning: dict[str, Any] | None = None
    """The user's or feature's warn flag value, if set: show a banner."""
    remaining_usd: Decimal | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tier: str | None = None
    """The user's tier the model was chosen for."""


class EventSink(Protocol):
    """Where ``record`` sends events: :class:`Emitter` or :class:`SyncEmitter`."""

    def emit(self, event: UsageEvent) -> bool:
        """Queue one event; never raises."""
        ...


@dataclass(slots=True)
class GuardStats:
    """Counters for dashboards and tests."""

    cache_hits: int = 0
    redis_reads: int = 0
    redis_errors: int = 0
    """Redis calls that failed (connection refused, timeout, ...)."""
    failed_open: int = 0
    """Admissions let through without a Redis answer (fail-open policy)."""
    outages: int = 0
    emitted: int = 0
    emit_rejected: int = 0
    """Events the emitter did not accept (its buffer was full)."""
    length_finishes: Counter[str] = field(default_factory=Counter)
    """Per feature: answers cut by ``max_tokens`` (``finish_reason == "length"``)."""


@dataclass(frozen=True, slots=True)
class _Plan:
    conf: Feature
    tier: str
    model: str
    max_tokens: int | None


_NO_FEATURE = Feature()
"""A feature missing from the budgets file: no caps, no model (built once, not per call)."""


class _GuardBase:
    """What the sync and async guards share: everything except the Redis calls."""

    def __init__(self, budgets: Budgets, emitter: EventSink | None = None, *,
                 prefix: str = "spendstream:", cache_ttl: float = 1.0,
                 fail_closed: bool = False, rate_limit_per_minute: int | None = None,
                 retry_interval: float = 1.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.budgets = budgets
        self.emitter = emitter
        self.prefix = prefix
        self.cache_ttl = cache_ttl
        self.fail_closed = fail_closed
        self.rate_limit_per_minute = rate_limit_per_minute
        self.retry_interval = retry_interval
        self.stats = GuardStats()
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, FlagSnapshot]] = {}
        self._down_until = 0.0
        self._down = False
        self._cause = "Redis unreachable"

    # -- before the call -------------------------------------------------------------

    def _plan(self, user_id: str, feature: str, model: str | None, max_tokens: int | None,
              tier: str | None) -> _Plan:
        conf = self.budgets.features.get(feature) or _NO_FEATURE
        tier = tier or self.budgets.users.tier_of(user_id)
        return _Plan(conf, tier, choose_model(conf, tier, model, feature),
                     choose_max_tokens(conf, max_tokens))

    def _cached(self, user_id: str, feature: str) -> FlagSnapshot | None:
        hit = self._cache.get((user_id, feature))
        if hit is not None and hit[0] > self._clock():
            self.stats.cache_hits += 1
            return hit[1]
        return None

    def _remember(self, user_id: str, feature: str, snapshot: FlagSnapshot) -> None:
        if len(self._cache) >= _MAX_CACHE:
            self._cache.clear()
        self._cache[(user_id, feature)] = (self._clock() + self.cache_ttl, snapshot)
        self.stats.redis_reads += 1

    def _redis_skipped(self) -> bool:
        """True while a recent failure says not to try Redis yet."""
        return self._down and self._clock() < self._down_until

    def _redis_ok(self) -> None:
        if self._down:
            self._down = False
            log.warning("Redis is reachable again: the guard enforces flags again")

    def _redis_failed(self, error: BaseException | None) -> None:
        """Count a failure (``None``: a call skipped during an outage); raise if failing
        closed, else return so that the call goes on without Redis's answer."""
        if error is not None:
            self.stats.redis_errors += 1
            self._down_until = self._clock() + self.retry_interval
            if not self._down:
                self._down = True
                self.stats.outages += 1
                self._cause = ("Redis refused the guard's credentials: check the password "
                               "in SPENDSTREAM_REDIS_URL"
                               if isinstance(error, AuthenticationError) else "Redis unreachable")
                policy = ("refusing calls (fail closed)" if self.fail_closed
                          else "letting calls through (fail open)")
                # redis-py's messages name the host, never the password.
                log.warning("%s (%s: %s): %s until it returns", self._cause,
                            type(error).__name__, error, policy)
        if self.fail_closed:
            raise ServiceUnavailable(f"the spend guard cannot check budgets ({self._cause}), "
                                     "and is configured to fail closed; retry shortly "
                                     "or check SPENDSTREAM_REDIS_URL") from error

    def _stale(self, user_id: str, feature: str) -> FlagSnapshot:
        """During an outage, flags last seen still apply (until their windows end)."""
        hit = self._cache.get((user_id, feature))
        return hit[1] if hit is not None else FlagSnapshot()

    def _check(self, user_id: str, feature: str, snapshot: FlagSnapshot, now: datetime
               ) -> None:
        error = refusal(snapshot, user_id, feature, now)
        if error is not None:
            raise error

    def _fit(self, plan: _Plan, messages: list[dict[str, Any]]) -> Fitted:
        return fit(messages, plan.model, plan.conf.max_input_tokens, plan.conf.on_input_over)

    def _throttle(self, user_id: str, decision: RateDecision) -> None:
        if not decision.admitted:
            limit = self.rate_limit_per_minute
            raise Throttled(
                f"user {user_id} made {decision.count} requests in the last minute (limit "
                f"{limit}): retry after {decision.retry_at:%H:%M:%S} UTC",
                reason="requests per minute", spent=Decimal(decision.count),
                budget=Decimal(limit or 0), unit="requests", resets_at=decision.retry_at,
                scope="user", subject=user_id)

    def _admission(self, user_id: str, feature: str, plan: _Plan, fitted: Fitted,
                   snapshot: FlagSnapshot, now: datetime) -> Admission:
        return Admission(user_id=user_id, feature=feature, model=plan.model,
                         max_tokens=plan.max_tokens, messages=fitted.messages,
                         input_tokens_local=fitted.tokens, input_exact=fitted.exact,
                         trimmed=fitted.trimmed, warning=snapshot.warning(now),
                         remaining_usd=snapshot.remaining_usd(now), tier=plan.tier)

    # -- after the call --------------------------------------------------------------

    def record(self, admission: Admission, *, provider: str | None, input_tokens: int,
               output_tokens: int, cached_input_tokens: int = 0, status: str = "ok",
               finish_reason: str | None = None, estimated: bool = False,
               model: str | None = None, cache_write_input_tokens: int = 0) -> UsageEvent:
        """Build and emit the usage event of a finished (or failed, or cut) call.

        A failed call is recorded with its ``status`` (the worker counts it at no cost);
        ``estimated`` marks counts made locally (a stream cut short). Never prices.
        """
        event = UsageEvent(
            user_id=admission.user_id, feature=admission.feature,
            model=model or admission.model, provider=provider,
            input_tokens=max(int(input_tokens), 0), output_tokens=max(int(output_tokens), 0),
            cached_input_tokens=max(int(cached_input_tokens), 0),
            cache_write_input_tokens=max(int(cache_write_input_tokens), 0), status=status,
            finish_reason=finish_reason, estimated=estimated,
            local_input_tokens=admission.input_tokens_local)
        if finish_reason == "length":
            self.stats.length_finishes[admission.feature] += 1
        if self.emitter is not None:
            if self.emitter.emit(event):
                self.stats.emitted += 1
            else:
                self.stats.emit_rejected += 1
        return event


def _options(settings: Settings) -> dict[str, Any]:
    return {"prefix": settings.redis_prefix, "cache_ttl": settings.guard_cache_ttl,
            "fail_closed": settings.guard_fail_closed,
            "rate_limit_per_minute": settings.guard_rate_limit_per_minute}


class Guard(_GuardBase):
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

    @classmethod
    def from_settings(cls, settings: Settings, budgets: Budgets,
                      emitter: EventSink | None = None, **options: Any) -> Guard:
        """A guard configured by the process settings (URL, prefix, ``SPENDSTREAM_GUARD_*``)."""
        return cls(settings.redis_url.get_secret_value(), budgets, emitter,
                   **{**_options(settings), **options})

    def admit(self, user_id: str, feature: str, messages: list[dict[str, Any]], *,
              model: str | None = None, max_tokens: int | None = None,
              tier: str | None = None) -> Admission:
        """Check flags, rate limit and input budget; raise BudgetExceeded, FeatureDisabled
        or Throttled (all SpendstreamError) or return what the call may use."""
        plan = self._plan(user_id, feature, model, max_tokens, tier)
        now = datetime.now(UTC)
        limited = self.rate_limit_per_minute is not None
        snapshot, blind, rated = self._flags(user_id, feature, limited)
        self._check(user_id, feature, snapshot, now)
        fitted = self._fit(plan, messages)
        if rated is not None:
            self._throttle(user_id, RateDecision.from_reply(rated))
        elif limited and not blind:  # flags came from the cache: the rate still goes to Redis
            blind = self._rate(user_id)
        if blind:
            self.stats.failed_open += 1
        return self._admission(user_id, feature, plan, fitted, snapshot, now)

    def _flags(self, user_id: str, feature: str, limited: bool = False
               ) -> tuple[FlagSnapshot, bool, Any]:
        """The flags; True when Redis did not answer (the stale snapshot stands in); and,
        when ``limited`` and Redis was asked, the rate script's reply from the same round
        trip (one pipeline: the MGET and the rate limit cost one round trip, not two)."""
        snapshot = self._cached(user_id, feature)
        if snapshot is not None:
            return snapshot, False, None
        if self._redis_skipped():
            self._redis_failed(None)
            return self._stale(user_id, feature), True, None
        keys = guard_keys(self.prefix, user_id, feature)
        try:
            if limited:
                pipe = self.redis.pipeline(transaction=False)
                pipe.mget(keys)
                self._script(keys=[rate_key(self.prefix, user_id)],
                             args=script_args(self.rate_limit_per_minute or 0, 60.0), client=pipe)
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

    def _rate(self, user_id: str) -> bool:
        """Take one request from the user's rate; True when Redis did not answer."""
        if self._redis_skipped():
            self._redis_failed(None)
            return True
        limit = self.rate_limit_per_minute or 0
        try:
            reply = self._script(keys=[rate_key(self.prefix, user_id)],
                                 args=script_args(limit, 60.0))
        except (RedisError, OSError) as e:
            self._redis_failed(e)
            return True
        self._redis_ok()
        self._throttle(user_id, RateDecision.from_reply(reply))
        return False

    def close(self) -> None:
        """Close the Redis connections (the emitter is the caller's to close)."""
        self.redis.close()


class AsyncGuard(_GuardBase):
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

    @classmethod
    def from_settings(cls, settings: Settings, budgets: Budgets,
                      emitter: EventSink | None = None, **options: Any) -> AsyncGuard:
        """See :meth:`Guard.from_settings`."""
        return cls(settings.redis_url.get_secret_value(), budgets, emitter,
                   **{**_options(settings), **options})

    async def admit(self, user_id: str, feature: str, messages: list[dict[str, Any]], *,
                    model: str | None = None, max_tokens: int | None = None,
                    tier: str | None = None) -> Admission:
        """See :meth:`Guard.admit`."""
        plan = self._plan(user_id, feature, model, max_tokens, tier)
        now = datetime.now(UTC)
        limited = self.rate_limit_per_minute is not None
        snapshot, blind, rated = await self._flags(user_id, feature, limited)
        self._check(user_id, feature, snapshot, now)
        fitted = self._fit(plan, messages)
        if rated is not None:
            self._throttle(user_id, RateDecision.from_reply(rated))
        elif limited and not blind:
            blind = await self._rate(user_id)
        if blind:
            self.stats.failed_open += 1
        return self._admission(user_id, feature, plan, fitted, snapshot, now)

    async def _flags(self, user_id: str, feature: str, limited: bool = False
                     ) -> tuple[FlagSnapshot, bool, Any]:
        """See :meth:`Guard._flags`."""
        snapshot = self._cached(user_id, feature)
        if snapshot is not None:
            return snapshot, False, None
        if self._redis_skipped():
            self._redis_failed(None)
            return self._stale(user_id, feature), True, None
        keys = guard_keys(self.prefix, user_id, feature)
        try:
            if limited:
                pipe = self.redis.pipeline(transaction=False)
                pipe.mget(keys)
                await self._script(keys=[rate_key(self.prefix, user_id)],
                                   args=script_args(self.rate_limit_per_minute or 0, 60.0),
                                   client=pipe)
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

    async def _rate(self, user_id: str) -> bool:
        """Take one request from the user's rate; True when Redis did not answer."""
        if self._redis_skipped():
            self._redis_failed(None)
            return True
        limit = self.rate_limit_per_minute or 0
        try:
            reply = await self._script(keys=[rate_key(self.prefix, user_id)],
                                       args=script_args(limit, 60.0))
        except (RedisError, OSError) as e:
            self._redis_failed(e)
            return True
        self._redis_ok()
        self._throttle(user_id, RateDecision.from_reply(reply))
        return False

    async def aclose(self) -> None:
        """Close the Redis connections (the emitter is the caller's to close)."""
        await self.redis.aclose()
