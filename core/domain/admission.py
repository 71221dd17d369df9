"""The guard's decision over flag values and budgets: pure, with an explicit ``now``.

Nothing here talks to Redis. The guard reads the flag keys (one MGET), parses them with
:func:`spendstream.contract.keys.parse_flag` into a :class:`FlagSnapshot`, and
:func:`refusal` turns a snapshot into the exception the call site sees. Model and
``max_tokens`` selection live here too, so every rule of issue 3 is a table-testable
function.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Literal

from spendstream.domain.budgets import Feature, Limit
from spendstream.domain.grants import raised
from spendstream.errors import (
    BudgetExceeded,
    ConfigError,
    FeatureDisabled,
    ModelNotAllowed,
    Refused,
    Throttled,
)


def parse_time(value: object) -> datetime | None:
    """A flag's ``window_end`` (RFC 3339, ``Z`` accepted) as an aware UTC datetime."""
    if not isinstance(value, str) or not value:
        return None
    return _parse_time(value)


@lru_cache(maxsize=1024)  # a cached flag is checked on every call: parse its times once
def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _decimal(value: object) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    return _parse_decimal(value if isinstance(value, str) else str(value))


@lru_cache(maxsize=1024)  # remaining_usd of a cached spend key is read on every call
def _parse_decimal(value: str) -> Decimal | None:
    try:
        return Decimal(value)
    except InvalidOperation:
        return None


@dataclass(frozen=True, slots=True)
class FlagSnapshot:
    """The flags that bear on one (user, feature), as read at one moment: the parsed
    values of :func:`spendstream.contract.keys.guard_keys`, fields in the same order."""

    cutoff_user: dict[str, Any] | None = None
    cutoff_feature: dict[str, Any] | None = None
    cutoff_global: dict[str, Any] | None = None
    warn_user: dict[str, Any] | None = None
    warn_feature: dict[str, Any] | None = None
    spend_user: dict[str, Any] | None = None

    def live(self, flag: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
        """``flag`` unless its window ended before ``now`` (a cached value outlived it) or
        has not started yet (an event dated ahead, within the worker's allowed skew)."""
        if flag is None:
            return None
        end = parse_time(flag.get("window_end"))
        if end is not None and end <= now:
            return None
        start = parse_time(flag.get("window_start"))
        return None if start is not None and start > now else flag

    def warning(self, now: datetime) -> dict[str, Any] | None:
        """The user's warn flag, else the feature's: what a banner should show."""
        return self.live(self.warn_user, now) or self.live(self.warn_feature, now)

    def remaining_usd(self, now: datetime) -> Decimal | None:
        """What is left of the user's daily USD budget, from the live spend key."""
        spend = self.live(self.spend_user, now)
        return None if spend is None else _decimal(spend.get("remaining_usd"))

    def budget(self, tier: Limit | None, now: datetime) -> Limit | None:
        """The user's budget today: the tier's, plus what a grant added (``spendstream
        grant`` / ``unblock``: the worker puts ``granted_usd`` / ``granted_tokens`` on the
        live spend key)."""
        return _granted(tier, self.live(self.spend_user, now))

    def remaining(self, tier: Limit | None, now: datetime) -> tuple[Decimal | None, int | None]:
        """What is left today of the user's USD and token budgets (:meth:`budget`; ``None``
        where the tier has no such budget): the budget less the live spend key's
        ``spent_usd`` / ``spent_tokens``, never below 0; no spend key yet means nothing
        spent."""
        spend = self.live(self.spend_user, now)
        tier = _granted(tier, spend)
        if tier is None:
            return None, None
        if spend is None:  # nothing spent yet today: the whole budget
            return tier.usd, tier.tokens
        usd = tokens = None
        if tier.usd is not None:
            spent = _decimal(spend.get("spent_usd")) or Decimal(0)
            usd = max(tier.usd - spent, Decimal(0))
        if tier.tokens is not None:
            used = spend.get("spent_tokens")
            tokens = max(tier.tokens - (used if isinstance(used, int) else 0), 0)
        return usd, tokens


def _granted(tier: Limit | None, spend: dict[str, Any] | None) -> Limit | None:
    """``tier`` raised by the grant on a live spend key (``granted_usd`` /
    ``granted_tokens``), if any."""
    if tier is None or spend is None:
        return tier
    usd = _decimal(spend.get("granted_usd"))
    tokens = spend.get("granted_tokens")
    if not usd and not (isinstance(tokens, int) and tokens > 0):
        return tier
    return raised(tier, usd or Decimal(0), tokens if isinstance(tokens, int) else 0)


def _error(cls: type[Refused], flag: dict[str, Any], default_reason: str, what_to_do: str
           ) -> Refused:
    reason = str(flag.get("reason") or default_reason)
    resets_at = parse_time(flag.get("window_end"))
    when = f"it resets at {resets_at:%Y-%m-%d %H:%M} UTC" if resets_at else "no reset time is set"
    spent, budget = _decimal(flag.get("spent")), _decimal(flag.get("budget"))
    unit = flag.get("unit")
    used = f" ({spent} of {budget} {unit})" if spent is not None and budget else ""
    return cls(f"{reason}{used}: {when}; {what_to_do}", reason=reason, spent=spent,
               budget=budget, unit=str(unit) if unit is not None else None, resets_at=resets_at,
               scope=flag.get("scope"), subject=flag.get("id"))


def refusal(snapshot: FlagSnapshot, user_id: str, feature: str, now: datetime
            ) -> Refused | None:
    """The exception for the first cutoff that applies, or ``None`` when the call may go.

    Order: the feature's switch (an operator's decision), then the global ceiling, then
    the user's own budget. A global flag whose id is ``tpm`` is a per-minute ceiling, so
    it throttles rather than exhausts a budget. Flags whose window has ended are ignored.
    """
    flag = snapshot.live(snapshot.cutoff_feature, now)
    if flag is not None:
        return _error(FeatureDisabled, flag, f"feature {feature} is disabled",
                      "ask an operator (`spendstream enable` re-enables it)")
    flag = snapshot.live(snapshot.cutoff_global, now)
    if flag is not None:
        if flag.get("id") == "tpm":
            return _error(Throttled, flag, "global tokens per minute ceiling",
                          "retry after the reset")
        return _error(BudgetExceeded, flag, "global daily budget", "retry after the reset")
    flag = snapshot.live(snapshot.cutoff_user, now)
    if flag is not None:
        return _error(BudgetExceeded, flag, f"daily budget of user {user_id}",
                      "the user can try again after the reset")
    return None


def choose_model(feature: Feature, tier: str, requested: str | None, feature_name: str,
                 allowed: tuple[str, ...] | None = None,
                 on_not_allowed: Literal["refuse", "downgrade"] = "refuse") -> str:
    """The caller's model, else the feature's model for this tier, else the feature's.

    When the tier lists ``allowed`` models, a model outside them is never used: it is
    refused (:class:`ModelNotAllowed`) or, with ``downgrade``, replaced by the feature's
    model for the tier when that is allowed, else by the tier's first allowed model.
    """
    default = feature.tier_models.get(tier) or feature.model
    model = requested or default
    if not model:
        raise ConfigError(f"feature {feature_name!r} has no model in the budgets file and the "
                          f"call gave none: pass model= or set features.{feature_name}.model")
    if allowed is None or model in allowed:
        return model
    if on_not_allowed == "downgrade" and allowed:
        return default if default in allowed else allowed[0]
    raise ModelNotAllowed(
        f"tier {tier} may not use model {model!r} (allowed: {', '.join(allowed) or 'none'}); "
        "call with an allowed model, or set users.on_model_not_allowed: downgrade",
        reason="model not allowed for the tier", scope="tier", subject=tier)


def choose_max_tokens(feature: Feature, requested: int | None) -> int | None:
    """``min(requested, max_output_tokens)``; the feature's cap when the caller gave none."""
    cap = feature.max_output_tokens
    if requested is None:
        return cap
    return requested if cap is None else min(requested, cap)
