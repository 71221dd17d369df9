"""What the sync and the async guard share: the plan of a call, the flag cache, the
checks and the event ``record`` builds; everything but the Redis calls, which
:class:`~spendstream.producers.guard.Guard` makes with redis-py and
:class:`~spendstream.producers.async_guard.AsyncGuard` with redis.asyncio."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from redis.exceptions import AuthenticationError

from spendstream.contract.event import UsageEvent
from spendstream.domain.admission import (
    FlagSnapshot,
    choose_max_tokens,
    choose_model,
    refusal,
)
from spendstream.domain.budgets import Budgets, Feature, Tier
from spendstream.domain.pricing import Pricer
from spendstream.errors import ServiceUnavailable, Throttled, UnknownFeature
from spendstream.producers.admission import Admission, EventSink, GuardStats
from spendstream.producers.ratelimit import (
    RateDecision,
    RateLimit,
    TokenSlot,
    user_limits,
)
from spendstream.producers.reservations import (
    Reservation,
    Reserver,
)
from spendstream.producers.trim import Fitted, fit

if TYPE_CHECKING:
    from spendstream.settings import Settings

log = logging.getLogger("spendstream.guard")

_MAX_CACHE = 100_000
"""(user, feature) pairs cached; the cache is cleared when full, so junk ids cannot grow it."""


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


class GuardCore:
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


def redis_options(settings: Settings) -> dict[str, Any]:
    """The guard options the process settings give (``SPENDSTREAM_GUARD_*``, the prefix)."""
    return {"prefix": settings.redis_prefix, "cache_ttl": settings.guard_cache_ttl,
            "fail_closed": settings.guard_fail_closed,
            "rate_limit_per_minute": settings.guard_rate_limit_per_minute}
