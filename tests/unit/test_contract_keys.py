"""The Redis key names and the flag value, spelled out once: what other languages read."""

from __future__ import annotations

from decimal import Decimal

import orjson

from spendstream.contract import keys


def test_key_names_are_the_documented_ones() -> None:
    assert keys.DEFAULT_PREFIX == "spendstream:"
    assert keys.cutoff_user("acct-7") == "cutoff:user:acct-7"
    assert keys.warn_user("acct-7") == "warn:user:acct-7"
    assert keys.cutoff_feature("chat") == "cutoff:feature:chat"
    assert keys.warn_feature("chat") == "warn:feature:chat"
    assert keys.warn("feature", "chat") == keys.warn_feature("chat")
    assert keys.CUTOFF_GLOBAL == "cutoff:global"
    assert keys.spend_user("acct-7") == "spend:user:acct-7"
    assert keys.spend_feature("chat") == "spend:feature:chat"
    assert keys.spend_global("day") == "spend:global:day" == keys.spend("global", "day")
    assert keys.rate_user("u") == "rate:user:u"
    assert keys.is_spend(keys.spend_user("u")) and not keys.is_spend(keys.cutoff_user("u"))


def test_a_subject_may_hold_colons() -> None:
    assert keys.cutoff_user("org:team:7") == "cutoff:user:org:team:7"


def test_flag_value_round_trips_with_the_documented_fields() -> None:
    value = keys.flag_value("user", "acct-7", "daily usd budget of tier free", "cutoff",
                            Decimal("0.13"), Decimal("0.13"), "usd", "2026-11-23T00:00:00Z",
                            "2026-11-24T00:00:00Z")
    assert set(value) == {"scope", "id", "reason", "level", "spent", "budget", "unit",
                          "window_start", "window_end"}
    assert orjson.loads(keys.encode(value)) == value
    assert keys.parse_flag(keys.encode(value)) == value
    assert value["spent"] == "0.13"  # money as a decimal string, never a float
