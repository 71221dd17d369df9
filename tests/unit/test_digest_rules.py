"""The digest's schedule, pro-rating and status rules, and the dashboard's money text."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from spendstream.dashboard.budget_view import pace_status
from spendstream.dashboard.digest import (
    Digest,
    FeatureLine,
    next_run,
    parse_schedule,
    prorated_budget,
    render,
)
from spendstream.dashboard.periods import elapsed_fraction, money, period_bounds
from spendstream.errors import ConfigError

T = datetime(2026, 11, 30, 3, 30, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize("text,expected", [
    ("mon 09:00", (0, 9, 0)), ("Friday 17:30", (4, 17, 30)), ("sun 0:05", (6, 0, 5))])
def test_schedule_parses(text, expected):
    assert parse_schedule(text) == expected


@pytest.mark.parametrize("text", ["", "mon", "monday 25:00", "xyz 09:00", "mon 9", "mon 09:00 x"])
def test_bad_schedule_says_what_to_write(text):
    with pytest.raises(ConfigError, match="e.g. 'mon 09:00'"):
        parse_schedule(text)


@pytest.mark.parametrize("schedule,expected", [
    ((0, 9, 0), datetime(2026, 11, 30, 9, 0, tzinfo=UTC)),   # later today
    ((0, 3, 0), datetime(2026, 12, 7, 3, 0, tzinfo=UTC)),    # passed today: next week
    ((0, 3, 30), T),                                         # exactly now
    ((2, 0, 0), datetime(2026, 12, 2, 0, 0, tzinfo=UTC))])
def test_next_run(schedule, expected):
    assert next_run(schedule, T) == expected


def test_prorated_budget_by_period():
    start = datetime(2026, 11, 1, tzinfo=UTC)
    mid = datetime(2026, 11, 16, tzinfo=UTC)  # 15 of 30 days gone
    assert prorated_budget(Decimal(300), "month", start, mid) == Decimal(150)
    assert prorated_budget(Decimal("0.5"), "day", start, mid) == Decimal("7.5")
    assert prorated_budget(Decimal(1), "hour", start, mid) == Decimal(360)


@pytest.mark.parametrize("spent,prorated,status", [
    ("111", "100", "over"), ("110", "100", "on track"), ("90", "100", "on track"),
    ("89", "100", "under"), ("0", "0", "on track"), ("1", "0", "over")])
def test_pace_status_band(spent, prorated, status):
    assert pace_status(Decimal(spent), Decimal(prorated)) == status


def test_periods_and_money():
    assert period_bounds("month", T) == (datetime(2026, 11, 1, tzinfo=UTC),
                                         datetime(2026, 12, 1, tzinfo=UTC))
    assert period_bounds("day", T)[1] == datetime(2026, 12, 1, tzinfo=UTC)
    assert elapsed_fraction(*period_bounds("day", T), T) == Decimal("0.145833")
    assert [money(Decimal(v)) for v in ("0.0345000", "12.00", "0", "0E-8", "100")] == [
        "0.0345", "12", "0", "0", "100"]
    assert money(None) is None


def test_render_names_every_feature_status_and_movers():
    d = Digest(datetime(2026, 11, 23, 9, tzinfo=UTC), datetime(2026, 11, 30, 9, tzinfo=UTC),
               [FeatureLine("chat", Decimal("120.5"), Decimal("100"), Decimal("1500"),
                            Decimal("1900"), "under"),
                FeatureLine("beta", Decimal("3"), Decimal("0"), Decimal("3"), None, None)],
               [("feature", "chat", Decimal("120.5"), Decimal("100"))], Decimal("123.5"))
    text = render(d)
    assert "2026-11-23 09:00 to 2026-11-30 09:00 UTC" in text
    assert "spent this week: $123.5" in text
    assert ("- chat: week $120.5 (+$20.5 (+20%) on the week before); month to date $1500 of "
            "$1900 pro-rated: UNDER") in text
    assert "- beta: week $3 (+$3 (new) on the week before); month to date $3 (no budget)" in text
    assert "- feature chat: $120.5 (+$20.5 (+20%))" in text


@pytest.mark.parametrize("calls,hits,flagged", [
    (10, 1, True), (1000, 199, True), (10, 2, False), (10, 0, True), (0, 0, False),
    (10, None, False)])  # None: the feature does not cache
def test_caching_not_helping_under_20_percent(calls, hits, flagged):
    line = FeatureLine("f", Decimal(0), Decimal(0), Decimal(0), None, None, calls, hits)
    assert line.caching_not_helping is flagged


@pytest.mark.parametrize("calls,hits,shown", [
    (13, 11, "84.6%"), (10000, 1996, "19.9%"), (5, 1, "20%"), (3, 3, "100%"), (7, 0, "0%")])
def test_hit_rates_show_one_decimal_rounded_down(calls, hits, shown):
    # 19.96% is flagged as under 20%, so it must not read as 20.0%.
    zero = Decimal(0)
    text = render(Digest(T, T, [FeatureLine("f", zero, zero, zero, None, None, calls, hits)],
                         [], zero))
    assert f"; cache hit rate {shown} ({hits} of {calls} calls)" in text


@pytest.mark.parametrize("week,before,shown", [
    ("0.000018", "0", "week $0.000018 (+$0.000018 (new)"),
    ("0.0045678", "0.0045", "week $0.0046 (+$0.000068 (+2%)"),
    ("0.004", "0.005", "week $0.004 (-$0.001 (-20%)"),
    ("1.234", "1.234", "week $1.23 (+$0 (+0%)"),
    ("0", "0", "week $0 (+$0 (new)")])
def test_small_amounts_keep_two_significant_digits(week, before, shown):
    zero = Decimal(0)
    line = FeatureLine("f", Decimal(week), Decimal(before), zero, None, None)
    assert f"- f: {shown} on the week before)" in render(Digest(T, T, [line], [], zero))


def test_render_flags_features_whose_cache_is_not_helping():
    zero = Decimal(0)
    d = Digest(datetime(2026, 11, 23, 9, tzinfo=UTC), datetime(2026, 11, 30, 9, tzinfo=UTC),
               [FeatureLine("faq", zero, zero, zero, None, None, 200, 110),
                FeatureLine("lookup", zero, zero, zero, None, None, 1000, 199),
                FeatureLine("chat", zero, zero, zero, None, None, 50, None)], [], zero)
    text = render(d)
    assert "- faq: week $0 " in text and "; cache hit rate 55% (110 of 200 calls)" in text
    assert "; cache hit rate 19.9% (199 of 1000 calls)" in text
    assert "caching not helping (cache hit rate under 20% this week" in text
    flagged = text.split("caching not helping")[1].split("\n\n")[0]
    assert "- lookup: 19.9% of 1000 calls answered from the cache" in flagged
    assert "faq" not in flagged and "chat" not in flagged
    assert "cache hit rate" not in text.split("- chat:")[1].splitlines()[0]
