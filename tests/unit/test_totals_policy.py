"""Idempotent folding by offset, and budget measurement in USD and tokens."""

from decimal import Decimal as D

import orjson
import pytest

from spendstream.domain.budgets import Limit
from spendstream.domain.policy import measure, pace_exceeded
from spendstream.domain.totals import Contribution, Totals

C = Contribution(D("0.02"), 100, ok=True, priced=True)


def test_totals_survive_json_and_merge_adds_every_sum():
    t = Totals()
    t.add(C)
    t.add(Contribution(D(0), 10, ok=False, priced=True))
    t.add(Contribution(D(0), 10, ok=True, priced=False, input_tokens=7, local_input_tokens=5),
          audit=True)
    back = Totals.from_json(t.to_json())
    assert back == t
    assert (back.failed, back.unpriced, back.audited, back.local_input) == (1, 1, 1, 5)
    both = Totals.from_json(t.sums())
    both.merge(back)
    assert (both.events, both.usd, both.tokens, both.failed) == (6, D("0.04"), 240, 2)


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


def test_stored_windows_decode_in_both_forms_and_encode_compactly():
    # What earlier workers logged (every short name, zeros too, "end" and stage two's
    # "parts") restores the same sums; what is logged now leaves zero sums out.
    old = (b'{"usd":"0.0300","tok":240,"n":6,"err":2,"unp":1,"lvl":2,"end":1795478400,'
           b'"parts":{"0":[7,{"usd":"0.03","tok":240,"n":6}]}}')
    t = Totals.decode(old)
    assert (t.usd, t.tokens, t.events, t.failed, t.unpriced, t.level, t.end) == (
        D("0.0300"), 240, 6, 2, 1, 2, 1795478400)
    assert t == Totals.from_json(orjson.loads(old))
    assert Totals.decode(t.encode()) == t
    assert orjson.loads(Totals(usd=D("0.5"), tokens=3, events=1).encode()) == {
        "usd": "0.5", "tok": 3, "n": 1}
    assert Totals.decode(None) == Totals() == Totals.decode(b"{}")
