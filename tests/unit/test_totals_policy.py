"""Idempotent folding by offset, and budget measurement in USD and tokens."""

from decimal import Decimal as D

import pytest

from spendstream.producers.budgets import Limit
from spendstream.streams.policy import measure, pace_exceeded
from spendstream.streams.totals import Contribution, Totals

C = Contribution(D("0.02"), 100, ok=True, priced=True)


def test_replay_of_a_partition_folds_nothing_twice():
    t = Totals()
    for off in range(10):
        assert t.add(0, off, C)
    for off in range(5, 12):  # redelivery after a crash overlaps what was folded
        t.add(0, off, C)
    assert (t.events, t.usd, t.tokens) == (12, D("0.24"), 1200)


def test_sources_are_tracked_separately_and_survive_json():
    t = Totals()
    t.add(0, 5, C)
    t.add(1, 3, Contribution(D(0), 10, ok=False, priced=True))
    t.add(2, 1, Contribution(D(0), 10, ok=True, priced=False))
    back = Totals.from_json(t.to_json())
    assert back == t
    assert (back.failed, back.unpriced) == (1, 1)
    assert not back.add(1, 3, C) and back.add(1, 4, C)


@pytest.mark.parametrize(("usd", "tokens", "limit", "unit", "ratio"), [
    ("0.10", 0, Limit(usd=D("0.13")), "usd", D("0.10") / D("0.13")),
    ("0.01", 9000, Limit(usd=D("0.13"), tokens=10000), "tokens", D("0.9")),
    ("0.13", 9000, Limit(usd=D("0.13"), tokens=10000), "usd", D(1)),
    ("0", 5, Limit(tokens=0), "tokens", D("Infinity")),
])
def test_measure_binds_on_the_furthest_dimension(usd, tokens, limit, unit, ratio):
    m = measure(Totals(usd=D(usd), tokens=tokens), limit)
    assert (m.unit, m.ratio) == (unit, ratio)


@pytest.mark.parametrize(("spent", "elapsed", "expected"), [
    ("50", "0.5", False),    # on pace
    ("61", "0.5", True),     # 22% ahead of a pro-rated 50
    ("5", "0.01", False),    # pennies on day one: below the 10% floor
    ("15", "0.05", True),
])
def test_pace(spent, elapsed, expected):
    assert pace_exceeded(D(spent), D(100), D(elapsed), D("1.2")) is expected
