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

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
from spendstream.domain.budgets import Budgets, Feature, Tier
from spendstream.domain.pricing import Pricer
from spendstream.errors import ServiceUnavailable, Throttled, UnknownFeature
from spendstream.producers.ratelimit import (
    SCRIPT,
    SETTLE_TOKENS,
    RateDecision,
    RateLimit,
    TokenSlot,
    script_keys_args,
    user_limits,
)
from spendstream.producers.reservations import (
    RESERVE,
    SETTLE,
    Reservation,
    ReserveDecision,
    Reserver,
)
from spendstream.producers.reservations import refusal as reservation_refusal
from spendstream.producers.trim import Fitted, fit

if TYPE_CHECKING:
    from spendstream.settings import Settings

log = logging.getLogger("spendstream.guard")

_MAX_CACHE = 100_000
"""(user, feature) pairs cached; the cache is cleared when full, so junk ids cannot grow it."""


@dataclass(slots=True)
class Admission:
    """What the guard allows for one call: the (maybe trimmed) messages, model and cap.

    Treat it as read-only (``dataclasses.replace`` makes a changed copy). It is not a
    frozen dataclass because one is built per call on the guard's hot path, and a frozen
    dataclass's ``__init__`` costs 3.5 µs of the cached check's 20 µs budget here."""

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
    """What is left of the user's daily USD budget (``None``: the tier has none)."""
    extra: dict[str, Any] = field(default_factory=dict)
    tier: str | None = None
    """The user's tier the model was chosen for."""
    remaining_tokens: int | None = None
    """What is left of the user's daily token budget (``None``: the tier has none)."""
    reservation: Reservation | None = None
    """The worst-case cost held for this call (``reservations:`` in the budgets file)."""
    cache_ttl: float | None = None
    """Seconds a complete answer may be cached (the feature's ``cache.ttl``); ``None``: off."""
    token_slot: TokenSlot | None = None
    """The call's tokens-per-minute entries, corrected to what it used by ``record``."""
    deferred: Reservation | None = None
    """The worst case not held yet (``admit(..., reserve=False)``): :meth:`Guard.reserve`
    holds it once the response cache has missed, so a cached answer holds nothing."""


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
    cache_answers: int = 0
    """Calls answered from the response cache."""
    length_finishes: Counter[str] = field(default_factory=Counter)
    """Per feature: answers cut by ``max_tokens`` (``finish_reason == "length"``)."""


@dataclass(frozen=True, slots=True)
class _Plan:
    feature: str
    """The feature as recorded: the caller's name, or ``default_feature``."""
    conf: Feature
    tier: str
    limit: Tier | None
    model: str
    max_tokens: int | None


_MAX_WARNED = 1_000
"""Unknown feature names warned about once each; the set is cleared when full."""


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
        self._warned: set[str] = set()
        self._plans: dict[tuple[str, str, str | None, int | None], _Plan] = {}
        self._reserver = Reserver(budgets) if budgets.reservations is not None else None
        self._pricer = (self._reserver.pricer if self._reserver is not None
                        else Pricer(budgets.prices)
                        if any(f.cache for f in budgets.features.values()) else None)

    # -- before the call -------------------------------------------------------------

    def _feature(self, feature: str) -> tuple[str, Feature]:
        """The feature's entry; an unknown name gets ``default_feature``'s (and is recorded
        under it) or is refused: a typo is never admitted uncapped."""
        conf = self.budgets.features.get(feature)
        if conf is not None:
            return feature, conf
        default = self.budgets.default_feature
        if default is None:
            known = ", ".join(sorted(self.budgets.features)) or "none"
            raise UnknownFeature(
                f"feature {feature!r} is not in the budgets file (known features: {known}); "
                "fix the name at the call site, add it under features:, or set "
                "default_feature: to give unknown names a budget")
        if feature not in self._warned:
            if len(self._warned) >= _MAX_WARNED:
                self._warned.clear()
            self._warned.add(feature)
            log.warning("feature %r is not in the budgets file: its calls are admitted and "
                        "recorded as default_feature %r", feature, default)
        return default, self.budgets.features[default]

    def _plan(self, user_id: str, feature: str, model: str | None, max_tokens: int | None,
              tier: str | None) -> _Plan:
        """What the budgets decide for the call; the same arguments always give the same
        plan, so it is memoised (bounded, like the flag cache)."""
        tier = tier or self.budgets.users.tier_of(user_id)
        key = (feature, tier, model, max_tokens)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._new_plan(feature, tier, model, max_tokens)
            if len(self._plans) >= _MAX_CACHE:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _new_plan(self, feature: str, tier: str, model: str | None, max_tokens: int | None
                  ) -> _Plan:
        name, conf = self._feature(feature)
        users = self.budgets.users
        limit = users.tiers.get(tier)
        allowed = limit.allowed_models if limit is not None else None
        return _Plan(name, conf, tier, limit,
                     choose_model(conf, tier, model, name, allowed, users.on_model_not_allowed),
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

    def _redis_failed_quietly(self, error: BaseException) -> None:
        """A cache read or write failed: count it like any failure, never raise (the cache
        is an optimisation, so even a fail-closed guard goes on to the model)."""
        with contextlib.suppress(ServiceUnavailable):
            self._redis_failed(error)

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

    def _limits(self, user_id: str, plan: _Plan, fitted: Fitted) -> list[RateLimit]:
        """The per-minute limits this call takes a slot of (none: no Redis call for them)."""
        tier_rates = plan.limit.limits if plan.limit is not None else None
        if plan.conf.limits is None and tier_rates is None \
                and self.rate_limit_per_minute is None:
            return []
        limits = user_limits(self.prefix, user_id, plan.feature, plan.tier,
                             feature_rates=plan.conf.limits, tier_rates=tier_rates,
                             per_user_rpm=self.rate_limit_per_minute,
                             tokens=fitted.tokens + (plan.max_tokens or 0))
        for limit in limits:
            if limit.weight > limit.limit:
                raise Throttled(
                    f"user {user_id}: this call needs {limit.weight} tokens (prompt plus "
                    f"max_tokens), more than {limit.describe()}: shorten the prompt or "
                    "lower max_tokens", reason=f"{limit.unit} per minute",
                    spent=Decimal(limit.weight), budget=Decimal(limit.limit), unit=limit.unit,
                    scope=limit.scope, subject=limit.subject)
        return limits

    def _throttle(self, user_id: str, limits: list[RateLimit], decision: RateDecision
                  ) -> None:
        if decision.admitted:
            return
        limit = limits[decision.index]
        wait = max((decision.retry_at - datetime.now(UTC)).total_seconds(), 0.0)
        needs = f"; this call needs {limit.weight}" if limit.unit == "tokens" else ""
        raise Throttled(
            f"user {user_id}: {limit.describe()} is reached ({decision.used} {limit.unit} "
            f"in the last minute{needs}): it frees up at {decision.retry_at:%H:%M:%S} UTC, "
            f"in {wait:.1f} s", reason=f"{limit.unit} per minute", spent=Decimal(decision.used),
            budget=Decimal(limit.limit), unit=limit.unit, resets_at=decision.retry_at,
            scope=limit.scope, subject=limit.subject)

    def _reservation(self, user_id: str, plan: _Plan, fitted: Fitted, snapshot: FlagSnapshot,
                     now: datetime) -> Reservation | None:
        if self._reserver is None:
            return None
        # Against today's budget: the tier's plus any grant the worker has applied.
        return self._reserver.reservation(user_id, plan.model, snapshot.budget(plan.limit, now),
                                          fitted.tokens, plan.max_tokens)

    def _settlement(self, admission: Admission, event: UsageEvent
                    ) -> tuple[list[str], list[Any]] | None:
        """The settle script's KEYS and ARGV for a recorded call, if it reserved."""
        if admission.reservation is None or self._reserver is None:
            return None
        actual = self._reserver.actual(admission.reservation, event)
        return admission.reservation.settle_call(self.prefix, actual, self._reserver.hold)

    def _settle(self, admission: Admission, event: UsageEvent) -> None:
        """Settle the reservation (the sync and async guards talk to Redis differently)."""

    def _ttl(self) -> float:
        return self._reserver.ttl if self._reserver is not None else 600.0

    def _admission(self, user_id: str, feature: str, plan: _Plan, fitted: Fitted,
                   snapshot: FlagSnapshot, now: datetime,
                   reservation: Reservation | None = None,
                   limits: list[RateLimit] | None = None,
                   deferred: Reservation | None = None) -> Admission:
        usd, tokens = snapshot.remaining(plan.limit, now)
        return Admission(user_id=user_id, feature=feature, model=plan.model,
                         max_tokens=plan.max_tokens, messages=fitted.messages,
                         input_tokens_local=fitted.tokens, input_exact=fitted.exact,
                         trimmed=fitted.trimmed, warning=snapshot.warning(now),
                         remaining_usd=usd, remaining_tokens=tokens, tier=plan.tier,
                         reservation=reservation, deferred=deferred,
                         token_slot=TokenSlot.of(limits) if limits else None,
                         cache_ttl=plan.conf.cache.ttl if plan.conf.cache else None)

    # -- after the call --------------------------------------------------------------

    def record(self, admission: Admission, *, provider: str | None, input_tokens: int,
               output_tokens: int, cached_input_tokens: int = 0, status: str = "ok",
               finish_reason: str | None = None, estimated: bool = False,
               model: str | None = None, cache_write_input_tokens: int = 0) -> UsageEvent:
        """Build and emit the usage event of a finished (or failed, or cut) call.

        A failed call is recorded with its ``status`` (the worker counts it at no cost);
        ``estimated`` marks counts made locally (a stream cut short). The event carries no
        price (the worker prices it); a reservation is settled to the call's cost.
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
        return self._emit(admission, event)

    def record_hit(self, admission: Admission, *, provider: str | None,
                   usage: dict[str, Any]) -> UsageEvent:
        """Record a call answered from the response cache: no tokens, no cost, marked
        ``cache_hit`` with ``saved_usd`` (what the original call, ``usage``, cost)."""
        model = usage.get("model") or admission.model
        saved = None
        if self._pricer is not None:
            saved = self._pricer.price(model, provider, int(usage.get("input_tokens") or 0),
                                       int(usage.get("output_tokens") or 0),
                                       int(usage.get("cached_input_tokens") or 0))
        event = UsageEvent(
            user_id=admission.user_id, feature=admission.feature, model=model,
            provider=provider, status="ok", finish_reason=usage.get("finish_reason"),
            cost_usd=Decimal(0), cache_hit=True, saved_usd=saved,
            local_input_tokens=admission.input_tokens_local)
        self.stats.cache_answers += 1
        return self._emit(admission, event)

    def _emit(self, admission: Admission, event: UsageEvent) -> UsageEvent:
        self._settle(admission, event)
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
        self._reserve_script = self.redis.register_script(RESERVE)
        self._settle_script = self.redis.register_script(SETTLE)
        self._tokens_script = self.redis.register_script(SETTLE_TOKENS)

    @classmethod
    def from_settings(cls, settings: Settings, budgets: Budgets,
                      emitter: EventSink | None = None, **options: Any) -> Guard:
        """A guard configured by the process settings (URL, prefix, ``SPENDSTREAM_GUARD_*``)."""
        return cls(settings.redis_url.get_secret_value(), budgets, emitter,
                   **{**_options(settings), **options})

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
        self._reserve_script = self.redis.register_script(RESERVE)
        self._settle_script = self.redis.register_script(SETTLE)
        self._tokens_script = self.redis.register_script(SETTLE_TOKENS)
        self._settling: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, budgets: Budgets,
                      emitter: EventSink | None = None, **options: Any) -> AsyncGuard:
        """See :meth:`Guard.from_settings`."""
        return cls(settings.redis_url.get_secret_value(), budgets, emitter,
                   **{**_options(settings), **options})

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
