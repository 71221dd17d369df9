"""The control record (grants and unblocks) and what a grant does to a user's day."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import orjson
import pytest

from spendstream.contract.control import control_of, grant, unblock
from spendstream.contract.event import MalformedEvent, UsageEvent
from spendstream.domain.budgets import Budgets, Limit
from spendstream.domain.grants import level_after, raised, unblock_amount
from spendstream.domain.ladder import Ladder, Level
from spendstream.domain.totals import Totals
from spendstream.grant import describe, no_effect

TS = datetime(2026, 11, 23, 10, tzinfo=UTC)


def test_a_grant_round_trips_and_is_recognised() -> None:
    g = grant("acct-7", "1.50", 2000, date(2026, 11, 25), reason="t", by="me", grant_id="g1",
              ts=TS)
    assert control_of(g.to_json()) == g
    assert g.key == b"acct-7"
    assert g.days == [date(2026, 11, 23), date(2026, 11, 24), date(2026, 11, 25)]
    assert orjson.loads(g.to_json())["usd"] == "1.50"  # money as a string, never a float


def test_usage_events_are_not_control_records() -> None:
    e = UsageEvent(user_id="u", feature="control", model="gpt-4o", input_tokens=1,
                   output_tokens=1)
    assert control_of(e.to_json()) is None  # holds the word as a value: parsed, not taken
    assert control_of(b"[1, 2]") is None and control_of(None) is None
    assert control_of(b'{"control": broken') is None  # the event decoder judges it


@pytest.mark.parametrize("fields,reason", [
    ({"usd": 1.5}, "usd"),  # a JSON number
    ({"usd": "-1"}, "usd"),
    ({}, "needs usd, tokens or both"),
    ({"usd": "1", "until": "2026-11-01"}, "before the grant's day"),
    ({"usd": "1", "until": "2027-01-30"}, "31 days"),
    ({"usd": "1", "colour": "red"}, "colour"),
])
def test_a_bad_grant_goes_to_the_dlq_with_the_reason(fields: dict, reason: str) -> None:
    raw = orjson.dumps({"control": "grant", "user_id": "u", "ts": "2026-11-23T10:00:00Z",
                        **fields})
    with pytest.raises(MalformedEvent, match=reason):
        control_of(raw)


@pytest.mark.parametrize("text", ["a\nb", "a\x00b", "a\x7fb", "a\x85b", "\x9b[31mred"])
@pytest.mark.parametrize("field", ["user_id", "grant_id"])
def test_ids_of_a_grant_hold_no_control_character(field: str, text: str) -> None:
    """The usage event's rule (C0, DEL and C1): one check serves both contracts."""
    raw = orjson.dumps({"control": "grant", "user_id": "u", "ts": "2026-11-23T10:00:00Z",
                        "usd": "1", field: text})
    with pytest.raises(MalformedEvent, match=f"{field}: .*control characters"):
        control_of(raw)


def test_an_unblock_takes_no_amounts() -> None:
    assert unblock("u", ts=TS).control == "unblock"
    with pytest.raises(MalformedEvent, match="takes no usd"):
        control_of(b'{"control": "unblock", "user_id": "u", "usd": "1"}')


def test_builders_raise_value_errors_naming_the_field() -> None:
    with pytest.raises(ValueError, match="user_id"):
        grant("", "1")


@pytest.mark.parametrize(("given", "plain"), [
    ("1.5E+3", "1500"), ("1e-6", "0.000001"), ("0.50", "0.50"), ("2.1000000", "2.1000000"),
    (Decimal("1E+2"), "100")])
def test_a_grant_amount_is_kept_in_plain_notation(given: str | Decimal, plain: str) -> None:
    g = grant("u", given, ts=TS)
    assert orjson.loads(g.to_json())["usd"] == plain
    assert f"raised by ${plain} " in describe(g)


@pytest.mark.parametrize("given", ["1e-12", "0.0000001", "1.0000005"])
def test_a_grant_amount_with_more_than_six_places_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match=f"usd: {given} has more than 6 decimal places"):
        grant("u", given, ts=TS)


def test_a_record_already_sent_with_more_places_is_still_read() -> None:
    sent = b'{"control": "grant", "user_id": "u", "usd": "1e-12", "grant_id": "g"}'
    got = control_of(sent)
    assert got is not None and got.usd == Decimal("1e-12")


def test_the_success_line_says_sent_and_that_an_id_is_applied_once() -> None:
    line = describe(grant("acct-7", "2", grant_id="g-1", ts=TS))
    assert line.startswith("grant g-1 sent: acct-7's daily budget to be raised by $2 today "
                           "(2026-11-23)")
    assert line.endswith("the worker applies each grant id once, so resending an id it "
                         "applied before changes nothing (a new amount needs a new id)")
    assert describe(unblock("acct-7", grant_id="u-1", ts=TS)).startswith(
        "unblock acct-7 sent (grant id u-1): if they are cut off now")


def test_a_grant_in_a_unit_the_tier_has_no_budget_for_is_flagged() -> None:
    budgets = Budgets.model_validate({"users": {"default_tier": "free", "tiers": {
        "free": {"usd": 1}, "tok": {"tokens": 1000}}, "members": {"t": "tok"}}})
    assert no_effect(grant("u", "1", 500, ts=TS), budgets) == (
        "u's tier free has no tokens budget, so the granted tokens change nothing for them")
    assert no_effect(grant("t", "1", ts=TS), budgets) == (
        "t's tier tok has no usd budget, so the granted usd change nothing for them")
    assert no_effect(grant("u", "1", ts=TS), budgets) is None
    assert no_effect(unblock("u", ts=TS), budgets) is None
    assert "no user tiers" in (no_effect(grant("u", "1", ts=TS), Budgets()) or "")


def test_a_grant_raises_only_the_units_a_tier_limits() -> None:
    usd_only = Limit(usd=Decimal("0.10"))
    assert raised(usd_only, Decimal("1"), 500) == Limit(usd=Decimal("1.10"))
    both = Limit(usd=Decimal("0.10"), tokens=1000)
    assert raised(both, Decimal(0), 500) == Limit(usd=Decimal("0.10"), tokens=1500)
    assert raised(None, Decimal(1), 0) is None


def test_unblock_grants_what_was_spent_and_the_level_falls() -> None:
    spent = Totals(usd=Decimal("0.12"), tokens=900, level=Level.CUTOFF)
    limit = Limit(usd=Decimal("0.10"))
    assert unblock_amount(spent, limit, limit) == (Decimal("0.12"), 0)
    # Unblocked once already (budget 0.22): not cut off any more, a second click grants 0.
    again = Totals(usd=Decimal("0.12"), level=Level.OK)
    assert unblock_amount(again, limit, raised(limit, Decimal("0.12"), 0)) == (Decimal(0), 0)
    # Cut off again after a grant of 0.05 (0.16 of 0.15): back to 0.10 left.
    cut = Totals(usd=Decimal("0.16"), level=Level.CUTOFF)
    assert unblock_amount(cut, limit, raised(limit, Decimal("0.05"), 0)) == (Decimal("0.11"), 0)
    both = Limit(usd=Decimal("1"), tokens=1000)
    assert unblock_amount(Totals(usd=Decimal("0.5"), tokens=1200, level=Level.CUTOFF), both,
                          both) == (Decimal("0.5"), 1200)
    ladder = Ladder(warn=Decimal("0.8"), cutoff=Decimal("1"), alert=None, escalate=None)
    assert level_after(spent, raised(limit, Decimal("0.12"), 0), ladder) == Level.OK
    assert level_after(spent, raised(limit, Decimal("0.03"), 0), ladder) == Level.WARN
    assert level_after(spent, raised(limit, Decimal("0.01"), 0), ladder) == Level.CUTOFF
    fresh = Totals(usd=Decimal("0.12"), level=Level.OK)  # never raised by a grant
    assert level_after(fresh, limit, ladder) == Level.OK
