"""The alert state machine: one transition per rise, never a fall, jumps are one message."""

from decimal import Decimal as D

import pytest

from spendstream.contract.alert import Level
from spendstream.domain.ladder import Ladder, ratio_of, step

L = Ladder()


@pytest.mark.parametrize(("prev", "ratio", "expected"), [
    (Level.OK, D("0.79"), None),
    (Level.OK, D("0.8"), (Level.OK, Level.WARN)),
    (Level.WARN, D("0.95"), None),
    (Level.WARN, D("1.0"), (Level.WARN, Level.CUTOFF)),
    (Level.OK, D("1.3"), (Level.OK, Level.ALERT)),  # one huge event: one message
    (Level.ALERT, D("1.5"), None),
    (Level.ALERT, D("2.0"), (Level.ALERT, Level.ESCALATED)),
    (Level.CUTOFF, D("0.5"), None),  # never falls inside a window
    (Level.ESCALATED, D("100"), None),
])
def test_step(prev, ratio, expected):
    tr = step(prev, ratio, L)
    assert (None if tr is None else (tr.previous, tr.current)) == expected


def test_levels_skipped_by_ladder():
    users = Ladder(alert=None, escalate=None)
    assert users.level_for(D("5")) == Level.CUTOFF


def test_a_stream_of_events_gives_one_message_per_state():
    level, messages = Level.OK, []
    for spent in range(0, 300, 7):  # cents, budget 100 cents
        tr = step(level, ratio_of(D(spent), D(100)), L)
        if tr:
            level = tr.current
            messages.append(tr.current)
    assert messages == [Level.WARN, Level.CUTOFF, Level.ALERT, Level.ESCALATED]


def test_zero_budget():
    assert ratio_of(D(0), D(0)) == 0
    assert ratio_of(D("0.01"), D(0)) == D("Infinity")
