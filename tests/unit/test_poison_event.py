"""One event must not stop counting (issue 11): windows at the ends of ``datetime`` do
not raise, and an event the stage cannot judge leaves no trace in its state, so the
agent can dead-letter it and count the rest of the batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from spendstream.domain.pricing import Pricer
from spendstream.streams.batches import packed_element
from spendstream.streams.state import id_hash
from tests.unit.test_stages import BUDGETS, NOW, World, ev

EXTREMES = [
    datetime(9999, 12, 20, tzinfo=UTC),  # raised in the month window on every later batch
    datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),  # crashed the agent
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),  # crashed the agent (UTC year 0)
    datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),  # UTC year 10000
    datetime(1, 1, 1, tzinfo=UTC),
]


@pytest.mark.parametrize("ts", EXTREMES, ids=str)
def test_an_event_at_the_ends_of_time_is_counted_and_the_next_batch_too(ts):
    w = World()
    # model_copy: the event model may reject such a ts itself; the stage must not raise
    w.send(ev("edge").model_copy(update={"ts": ts}), ev("u1"))
    w.send(ev("u1"))  # the batch after: the one that raised on every later batch
    assert w.counters.events == 3
    assert w.flags.keys["spend:user:u1"][0]["events"] == 2


class Boom(Pricer):
    """Pricing that raises for one model: any exception while judging one event."""

    def price_event(self, event):
        if event.model == "boom":
            raise ArithmeticError("injected")
        return super().price_event(event)


def test_an_event_that_raises_leaves_the_stage_as_it_was():
    w = World()
    w.users.pricer = Boom(BUDGETS.prices)
    w.send(ev("u1"))
    before = (w.counters.events, dict(w.ustate.part(0).records), w.ustate.offset(0))
    bad = ev("u2", model="boom", eid="bad-1")
    with pytest.raises(ArithmeticError):
        w.users.process(0, 99, bad, NOW)
    assert not w.users._dirty and not w.users._minutes
    assert not w.ustate.seen(0, id_hash("bad-1"))  # not taken for a duplicate later
    assert (w.counters.events, dict(w.ustate.part(0).records), w.ustate.offset(0)) == before
    w.send(ev("u1"))  # the rest of the batch is counted, the batch finishes
    assert w.flags.keys["spend:user:u1"][0]["events"] == 2
    assert "spend:user:u2" not in w.flags.keys
    w.users.pricer = Pricer(BUDGETS.prices)  # once it can be judged, it is counted
    w.send(ev("u2", eid="bad-1"))
    assert w.flags.keys["spend:user:u2"][0]["events"] == 1


def test_packed_element_is_the_json_of_one_element():
    assert packed_element(b'[{"a": 1}, {"b": [2]}]', 1) == b'{"b":[2]}'
    assert packed_element(b'{"a": 1}', 0) is None
    assert packed_element(None, 0) is None
