"""The guard's pure decision: flags to exceptions, model / max_tokens / tier selection."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from spendstream.contract.keys import FLAG_KINDS, guard_keys, parse_flag
from spendstream.domain.admission import (
    FlagSnapshot,
    choose_max_tokens,
    choose_model,
    refusal,
)
from spendstream.domain.budgets import Feature, Limit, parse_budgets
from spendstream.errors import (
    BudgetExceeded,
    ConfigError,
    FeatureDisabled,
    ModelNotAllowed,
    Refused,
    SpendstreamError,
    Throttled,
)

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
END = "2026-11-24T00:00:00Z"


def flag(scope: str, subject: str, *, end: str = END, unit: str = "usd", reason: str = "r"
         ) -> dict[str, Any]:
    return {"scope": scope, "id": subject, "reason": reason, "level": "cutoff", "spent": "1.50",
            "budget": "1.00", "unit": unit, "window_start": "2026-11-23T00:00:00Z",
            "window_end": end}


USER = flag("user", "acct-7", reason="daily usd budget of tier free")
FEAT = flag("feature", "chat", reason="disabled by operator")
DAILY = flag("global", "daily_cap", reason="global daily_usd cap")
TPM = flag("global", "tpm", end="2026-11-23T10:01:00Z", unit="tokens")

# (name, snapshot, expected exception type or None, expected scope)
CASES: list[tuple[str, FlagSnapshot, type[Refused] | None, str | None]] = [
    ("nothing set", FlagSnapshot(), None, None),
    ("warnings only", FlagSnapshot(warn_user=USER, warn_feature=FEAT), None, None),
    ("user cutoff", FlagSnapshot(cutoff_user=USER), BudgetExceeded, "user"),
    ("feature kill switch", FlagSnapshot(cutoff_feature=FEAT), FeatureDisabled, "feature"),
    ("global daily cap", FlagSnapshot(cutoff_global=DAILY), BudgetExceeded, "global"),
    ("global tokens per minute", FlagSnapshot(cutoff_global=TPM), Throttled, "global"),
    ("feature wins over user", FlagSnapshot(cutoff_user=USER, cutoff_feature=FEAT),
     FeatureDisabled, "feature"),
    ("global wins over user", FlagSnapshot(cutoff_user=USER, cutoff_global=DAILY),
     BudgetExceeded, "global"),
    ("flag of a window that has not started ignored (an event dated ahead)",
     FlagSnapshot(cutoff_user={**USER, "window_start": "2026-11-24T00:00:00Z",
                               "window_end": "2026-11-25T00:00:00Z"},
                  cutoff_global={**DAILY, "window_start": "2026-11-26T00:00:00Z",
                                 "window_end": "2026-11-27T00:00:00Z"}), None, None),
    ("expired cached flag ignored",
     FlagSnapshot(cutoff_user=flag("user", "acct-7", end="2026-11-23T09:59:59Z")), None, None),
    ("flag without a window end still refuses", FlagSnapshot(cutoff_feature={}),
     FeatureDisabled, None),
]


@pytest.mark.parametrize(("name", "snapshot", "expected", "scope"), CASES,
                         ids=[c[0] for c in CASES])
def test_refusal(name: str, snapshot: FlagSnapshot, expected: type[Refused] | None,
                 scope: str | None) -> None:
    error = refusal(snapshot, "acct-7", "chat", NOW)
    if expected is None:
        assert error is None
        return
    assert type(error) is expected and isinstance(error, SpendstreamError)
    assert error.scope == scope


def test_refusal_carries_reason_spend_and_reset() -> None:
    error = refusal(FlagSnapshot(cutoff_user=USER), "acct-7", "chat", NOW)
    assert isinstance(error, BudgetExceeded)
    assert error.reason == "daily usd budget of tier free"
    assert (error.spent, error.budget, error.unit) == (Decimal("1.50"), Decimal("1.00"), "usd")
    assert error.resets_at == datetime(2026, 11, 24, tzinfo=UTC)
    assert "2026-11-24 00:00 UTC" in str(error) and "1.50 of 1.00 usd" in str(error)


def test_tpm_resets_at_the_end_of_the_minute() -> None:
    error = refusal(FlagSnapshot(cutoff_global=TPM), "u", "chat", NOW)
    assert isinstance(error, Throttled)
    assert error.resets_at == datetime(2026, 11, 23, 10, 1, tzinfo=UTC)


def test_snapshot_from_mget_values_in_key_order() -> None:
    keys = guard_keys("p:", "u1", "chat")
    assert keys == ["p:cutoff:user:u1", "p:cutoff:feature:chat", "p:cutoff:global",
                    "p:warn:user:u1", "p:warn:feature:chat", "p:spend:user:u1"]
    assert tuple(FlagSnapshot.__dataclass_fields__) == FLAG_KINDS  # the snapshot's order
    spend = {"remaining_usd": "0.25", "window_end": END}
    snap = FlagSnapshot(*map(parse_flag, [None, None, None, orjson.dumps(USER), None,
                                          orjson.dumps(spend)]))
    assert snap.warning(NOW) == USER
    assert snap.remaining_usd(NOW) == Decimal("0.25")
    assert FlagSnapshot().remaining_usd(NOW) is None
    assert FlagSnapshot(warn_feature=FEAT).warning(NOW) == FEAT


@pytest.mark.parametrize(("raw", "expected"), [
    (None, None), (b'{"id": "x"}', {"id": "x"}), ("1", {}), (b"not json", {}), (b"[1]", {}),
])
def test_parse_flag_treats_any_present_key_as_set(raw: bytes | str | None,
                                                 expected: dict[str, Any] | None) -> None:
    assert parse_flag(raw) == expected


FEATURE = Feature(model="gpt-4o", max_output_tokens=1000,
                  tier_models={"free": "gpt-4o-mini"})


@pytest.mark.parametrize(("requested", "tier", "expected"), [
    (None, "pro", "gpt-4o"),
    (None, "free", "gpt-4o-mini"),
    ("o3", "free", "o3"),
    ("o3", "pro", "o3"),
])
def test_choose_model(requested: str | None, tier: str, expected: str) -> None:
    assert choose_model(FEATURE, tier, requested, "chat") == expected


def test_choose_model_without_any_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="has no model"):
        choose_model(Feature(), "free", None, "chat")


@pytest.mark.parametrize(("cap", "requested", "expected"), [
    (1000, None, 1000), (1000, 200, 200), (1000, 5000, 1000), (1000, 1000, 1000),
    (None, None, None), (None, 300, 300),
])
def test_choose_max_tokens(cap: int | None, requested: int | None, expected: int | None) -> None:
    assert choose_max_tokens(Feature(max_output_tokens=cap), requested) == expected


def test_tier_comes_from_the_budgets_members() -> None:
    b = parse_budgets({"users": {"tiers": {"free": {"usd": 1}, "pro": {"usd": 5}},
                                 "members": {"acct-9": "pro"}}})
    assert b.users.tier_of("acct-9") == "pro" and b.users.tier_of("acct-1") == "free"


def test_a_feature_without_a_model_names_itself_in_the_error():
    with pytest.raises(ConfigError) as e:
        choose_model(Feature(), "free", None, "chat")
    assert "features.chat.model" in str(e.value) and "{name}" not in str(e.value)


@pytest.mark.parametrize(("requested", "policy", "expected"), [
    (None, "refuse", "gpt-4o-mini"),           # the tier's model is allowed
    ("gpt-4o-mini", "refuse", "gpt-4o-mini"),
    ("gpt-4o", "refuse", ModelNotAllowed),      # never silently allowed
    ("gpt-4o", "downgrade", "gpt-4o-mini"),     # the feature's model for the tier
])
def test_allowed_models(requested, policy, expected):
    feature = Feature(model="gpt-4o", tier_models={"free": "gpt-4o-mini"})
    allowed = ("gpt-4o-mini", "gpt-4.1-nano")
    if expected is ModelNotAllowed:
        with pytest.raises(ModelNotAllowed, match="tier free may not use model 'gpt-4o'"):
            choose_model(feature, "free", requested, "chat", allowed, policy)
    else:
        assert choose_model(feature, "free", requested, "chat", allowed, policy) == expected


def test_downgrade_picks_the_first_allowed_when_the_feature_model_is_not():
    feature = Feature(model="gpt-4o")
    assert choose_model(feature, "free", "o3", "chat", ("gpt-4.1-nano",), "downgrade") \
        == "gpt-4.1-nano"


def test_remaining_for_usd_token_and_no_tier():
    spend = {"spent_usd": "0.40", "spent_tokens": 12000, "window_end": END}
    snap = FlagSnapshot(spend_user=spend)
    assert snap.remaining(Limit(usd=Decimal("0.50")), NOW) == (Decimal("0.10"), None)
    assert snap.remaining(Limit(tokens=10000), NOW) == (None, 0)  # never below 0
    assert FlagSnapshot().remaining(Limit(usd=Decimal(1), tokens=5), NOW) == (Decimal(1), 5)
    assert snap.remaining(None, NOW) == (None, None)
