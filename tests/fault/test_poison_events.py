"""No poison pill (issue 11): whole batches of good and hostile events through the real
worker, generated with hypothesis.

Hostile events are timestamps at the ends of what ``datetime`` holds (they raised in the
window code on every later batch, or crashed the agent) and events that raise while the
worker judges them (pricing of :data:`~tests.fault.poison_worker.POISON` raises, injected
in the real CLI by ``tests/fault/poison_worker.py``), alone or inside packed records next
to good events. Every good event must be counted to the cent; each hostile one is either
counted (the decoder and the worker accept it) or in ``<topic>.dlq`` once, with its
reason; the worker never stops counting. ``FAULT_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import hypothesis
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from spendstream.contract.decode import decode_events
from spendstream.contract.event import MalformedEvent
from tests.fault.faultkit import Ledger, Message, Stack, message, usage
from tests.fault.poison_worker import POISON
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

BUDGETS = """\
users:
  tiers: {free: {usd: 1000}}
features:
  chat: {period: month, usd: 1000}
"""
BATCHES = 12
EDGES = [datetime(9999, 12, 20, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
         datetime(1, 1, 1, tzinfo=UTC)]
OFFSETS = st.sampled_from([timedelta(0), timedelta(hours=1), timedelta(hours=-5),
                           timedelta(hours=14), timedelta(hours=-12)])


@st.composite
def edge_ts(draw: st.DrawFn) -> str:
    """A timestamp at an end of ``datetime``, in some offset (UTC may be year 0 or 10000)."""
    base = draw(st.sampled_from(EDGES))
    offset = draw(OFFSETS)
    local = base.replace(tzinfo=timezone(offset)) if draw(st.booleans()) else base
    return local.isoformat().replace("+00:00", "Z")


@st.composite
def batch(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """A batch: ("good", i) events and hostile ones, single or packed together."""
    items: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(3, 25))):
        kind = draw(st.sampled_from(["good", "good", "edge", "poison", "packed"]))
        if kind == "edge":
            items.append(("edge", draw(edge_ts())))
        elif kind == "packed":
            items.append(("packed", draw(st.lists(st.sampled_from(["good", "poison", "edge"]),
                                                  min_size=1, max_size=6))))
        else:
            items.append((kind, None))
    return items


def generate(seed: int) -> list[list[tuple[str, Any]]]:
    out: list[list[tuple[str, Any]]] = []

    @hypothesis.seed(seed)
    @settings(max_examples=BATCHES, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(batch())
    def collect(b: list[tuple[str, Any]]) -> None:
        out.append(b)

    collect()
    return out


class Plan:
    """The messages to publish and what the worker must make of each."""

    def __init__(self) -> None:
        self.ledger = Ledger()  # good events only: their users' spend keys must be exact
        self.messages: list[Message] = []
        self.dead: Counter[bytes] = Counter()
        """DLQ value -> times expected (a bad element alone, else the whole record)."""
        self.reasons: dict[bytes, str] = {}
        """DLQ value -> how its reason must start."""
        self.counted = 0  # events the worker must count (good and accepted hostile)
        self.n = 0

    def event(self, kind: str, ts: str | None = None, packed: bool = False) -> dict[str, Any]:
        self.n += 1
        if kind == "good":
            # A packed record has no key: its users get their own (per-user windows live
            # with the partition, so one user's events must share one).
            user = f"packed-{self.n}" if packed else f"good-{self.n % 7}"
            e = usage(user, cost=f"0.{self.n:05d}1")
            self.ledger.add(e)
            return e
        if kind == "poison":
            return usage(f"poison-{self.n}", cost=None, model=POISON)
        return usage(f"edge-{self.n}", ts=ts)

    def expect(self, value: bytes, element: dict[str, Any] | None, kind: str) -> None:
        """What the worker does with one event (``element``: inside a packed record)."""
        outcome = decode_events(orjson.dumps(element) if element else value)[0]
        dlq_value = orjson.dumps(element) if element is not None else value
        if isinstance(outcome, MalformedEvent):
            self.dead[dlq_value] += 1
            # a bad element's reason is "element i of n: <the decoder's reason>"
            self.reasons[dlq_value] = "element " if element is not None else outcome.reason
        elif kind == "poison":
            self.dead[dlq_value] += 1
            self.reasons[dlq_value] = "could not count: ArithmeticError"
        else:
            self.counted += 1

    def add(self, item: tuple[str, Any]) -> None:
        kind, arg = item
        if kind != "packed":
            e = self.event(kind, arg)
            key, value = message(e)
            try:
                self.expect(value, None, kind)
            except Exception:  # the decoder itself raises: the agent dead-letters it all
                self.dead[value] += 1
                self.reasons[value] = "could not decode"
            self.messages.append((key, value))
            return
        events = [self.event(k, random.choice(EDGES).isoformat(), packed=True) for k in arg]
        value = orjson.dumps(events)
        try:
            for k, e in zip(arg, events, strict=True):
                self.expect(value, e, k)
        except Exception:
            self.dead[value] += 1
            self.reasons[value] = "could not decode"
        self.messages.append((None, value))


def test_batches_of_good_and_hostile_events_count_every_good_one(broker, redis_url, uid,
                                                                 tmp_path):
    seed = int(os.environ.get("FAULT_SEED") or random.randrange(2**32))
    print(f"\nhypothesis seed {seed} (FAULT_SEED={seed} draws the same batches)")
    random.seed(seed)
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, BUDGETS, partitions=2)
    stack.create_topics()
    keys = stack.redis()
    plan = Plan()
    batches = generate(seed)
    worker = stack.worker(module="tests.fault.poison_worker")
    try:
        for b in batches:
            start = len(plan.messages)
            for item in b:
                plan.add(item)
            stack.publish(plan.messages[start:])
        last = plan.event("good")  # counted after every hostile batch: never stopped
        plan.counted += 1
        plan.messages.append(message(last))
        stack.publish([message(last)])
        want_dead = sum(plan.dead.values())
        status = wait_until(lambda: (s := worker.status())["events"] >= plan.counted
                            and s["dead_letters"] >= want_dead and s, 90,
                            "every event counted or dead-lettered", check=worker.alive)
        assert plan.ledger.settle(keys, 10, kinds=("user",), check=worker.alive) == []
        dead = stack.read(".dlq", want_dead, timeout=30)
    finally:
        stack.close()
    assert worker.proc.returncode == 0, worker.output()
    print(f"{len(batches)} batches, {len(plan.messages)} records: {plan.counted} events "
          f"counted ({plan.ledger.total} good), {want_dead} dead letters; status {status}")
    assert status["events"] == plan.counted and status["dead_letters"] == want_dead
    assert Counter(m.value for m in dead) == plan.dead  # each once
    for m in dead:
        reason = dict(m.headers)["x-spendstream-reason"].decode()
        assert reason.startswith(plan.reasons[m.value]), (reason, plan.reasons[m.value])
