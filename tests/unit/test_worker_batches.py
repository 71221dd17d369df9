"""The worker's batch loop bodies without faust or Kafka: what one fetched batch becomes
(rollup messages, dead letters, flags), and changelog recovery that skips keyless records.

``app.py`` hands each faust batch to these classes unchanged; the integration tests drive
the same path through a real broker.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from spendstream.contract.control import grant
from spendstream.contract.event import UsageEvent
from spendstream.contract.keys import spend_feature, spend_user
from spendstream.contract.rollup import RollupMessage
from spendstream.domain.budgets import Budgets, parse_budgets
from spendstream.domain.pricing import Pricer
from spendstream.streams import batches
from spendstream.streams.batches import Record, RollupBatches, UserBatches, recover
from spendstream.streams.grants import GRANT
from spendstream.streams.rollup_stage import RollupStage
from spendstream.streams.stages import Counters
from spendstream.streams.state import BatchedState
from spendstream.streams.user_stage import UserStage

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BUDGETS = parse_budgets({"features": {"chat": {"period": "month", "usd": "1.00"}},
                         "prices": {"m": {"input": 10, "output": 10}}})


class Flags:
    def __init__(self) -> None:
        self.keys: dict[str, dict[str, Any]] = {}
        self.kicks = 0

    def set(self, key: str, value: dict[str, Any] | bytes, expire_at: int, *,
            extend_only: bool = False) -> None:
        self.keys[key] = orjson.loads(value) if isinstance(value, bytes) else value

    def delete(self, key: str) -> None:
        self.keys.pop(key, None)

    def kick(self) -> None:
        self.kicks += 1


class Pipeline:
    """Both batch bodies wired as ``build_app`` wires them, with lists for the topics."""

    def __init__(self, budgets: Budgets = BUDGETS) -> None:
        self.flags, counters = Flags(), Counters()
        self.changelog: list[tuple[int, bytes, bytes | None]] = []
        self.ustate = BatchedState(lambda p, k, v: self.changelog.append((p, k, v)),
                                   clock=NOW.timestamp, tracked=(GRANT,))  # as build_app
        rstate = BatchedState(lambda p, k, v: None, clock=NOW.timestamp)
        grace = timedelta(minutes=10)
        users = UserStage(budgets, Pricer(budgets.prices), self.ustate, self.flags,
                          lambda a: True, grace, counters)
        features = RollupStage(budgets, rstate, self.flags, lambda a: True, grace, counters)
        self.rollup_topic: list[tuple[bytes, bytes]] = []
        self.partitions: list[int | None] = []
        self.dlq: list[tuple[Record, str, bytes | None]] = []
        self.users = UserBatches(users, self.ustate, set(), self.send, self.dead_letter,
                                 self.flags.kick)
        self.features = RollupBatches(features, self.dead_letter, self.flags.kick)

    async def send(self, key: bytes, value: bytes, partition: int | None) -> None:
        self.rollup_topic.append((key, value))
        self.partitions.append(partition)

    async def dead_letter(self, record: Record, reason: str, element: bytes | None) -> None:
        self.dlq.append((record, reason, element))

    async def roll(self) -> None:
        """Deliver what stage one forwarded to stage two (one partition)."""
        sent, self.rollup_topic = self.rollup_topic, []
        await self.features.process([Record(0, i, v) for i, (_, v) in enumerate(sent)], NOW)


def event(user: str = "u1", tokens: int = 1000) -> UsageEvent:
    return UsageEvent(user_id=user, feature="chat", model="m", input_tokens=tokens, ts=NOW)


async def test_a_batch_is_counted_forwarded_and_its_bad_input_dead_lettered() -> None:
    w = Pipeline()
    good = event()
    bad_element = b'{"user_id":"u2"}'  # the DLQ gets the element as compact JSON
    packed = b"[" + event("u2").to_json() + b"," + bad_element + b"]"
    await w.users.process([Record(0, 0, good.to_json()), Record(0, 1, packed),
                           Record(0, 2, b"not json")], NOW)

    reasons = [(r.offset, element) for r, _, element in w.dlq]
    assert reasons == [(1, bad_element), (2, None)]  # the bad element alone; its neighbour counted
    assert all(reason for _, reason, _ in w.dlq)
    assert w.flags.keys[spend_user("u1")]["events"] == 1
    assert w.flags.keys[spend_user("u2")]["events"] == 1
    (key, value), *_ = w.rollup_topic
    message = RollupMessage.decode(value)
    assert key == b"chat" and message.source == 0 and message.version == w.ustate.offset(0)

    await w.roll()
    chat = w.flags.keys[spend_feature("chat")]
    assert chat["events"] == 2 and chat["spent_usd"] == "0.02"
    assert w.flags.kicks == 2


async def test_a_big_batch_commits_before_a_changelog_record_could_outgrow_kafka(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "COMMIT_BYTES", 3 * batches.changelog_weight(event()))
    w = Pipeline()
    await w.users.process([Record(0, i, event(f"u{i}").to_json()) for i in range(7)], NOW)
    assert len(w.changelog) >= 3  # committed after the 3rd and the 6th event, then at the end
    await w.roll()
    assert w.flags.keys[spend_feature("chat")]["events"] == 7


async def test_the_commit_bound_is_per_partition_since_each_logs_its_own_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "COMMIT_BYTES", 3 * batches.changelog_weight(event()))
    w = Pipeline()
    # two events in each of two partitions: neither record nears the bound, one commit
    await w.users.process([Record(i % 2, i, event(f"u{i}").to_json()) for i in range(4)], NOW)
    assert sorted(p for p, _, _ in w.changelog) == [0, 1]
    # a third event in partition 0 reaches it: a commit before the batch ends
    w.changelog.clear()
    await w.users.process([Record(0, 10 + i, event(f"v{i}").to_json()) for i in range(4)],
                          NOW)
    assert [p for p, _, _ in w.changelog] == [0, 0]
    await w.roll()
    assert w.flags.keys[spend_feature("chat")]["events"] == 8


async def test_a_malformed_rollup_message_goes_to_the_dlq_and_the_rest_is_judged() -> None:
    w = Pipeline()
    await w.users.process([Record(0, 0, event().to_json())], NOW)
    w.rollup_topic.insert(0, (b"chat", b'{"p": 0}'))
    await w.roll()
    assert [reason for _, reason, _ in w.dlq] == [
        "malformed rollup message: KeyError('v')"]
    assert w.flags.keys[spend_feature("chat")]["events"] == 1


async def test_recovery_skips_a_keyless_changelog_record_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    w = Pipeline()
    await w.users.process([Record(0, i, event().to_json()) for i in range(3)], NOW)
    assert w.changelog
    restored = BatchedState(lambda p, k, v: None, clock=NOW.timestamp)
    stray = (0, None, orjson.dumps({"r": {}, "i": [], "t": 0, "o": 99}))
    with caplog.at_level(logging.WARNING, logger="spendstream.worker"):
        skipped = recover(restored, [stray, *w.changelog])
    assert skipped == 1
    assert "without a key" in caplog.text
    assert restored.offset(0) == w.ustate.offset(0)  # the stray record's offset 99 unused
    assert sorted(restored.scan()) == sorted(w.ustate.scan())


async def test_forwards_go_one_message_per_rollup_partition_and_each_window_where_its_key_routes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from spendstream.contract.rollup import message_key
    route = {"*": 0, "chat": 1, "search": 1, "faq": 2}.__getitem__
    w = Pipeline()
    w.users.route = route
    events = [UsageEvent(user_id=f"u{i}", feature=f, model="m", input_tokens=10, ts=NOW)
              for i, f in enumerate(["chat", "search", "faq", "chat", "faq"])]
    await w.users.process([Record(0, i, e.to_json()) for i, e in enumerate(events)], NOW)
    sent = [RollupMessage.decode(v) for _, v in w.rollup_topic]
    assert sorted(w.partitions) == [0, 1, 2]  # three messages, not one per feature
    for message, partition in zip(sent, w.partitions, strict=True):
        assert {route(message_key(k)) for k in message.parts} == {partition}
    await w.roll()
    assert [w.flags.keys[spend_feature(f)]["events"] for f in ("chat", "search", "faq")] == \
        [2, 1, 2]

    # A batch touching more windows than one message should hold is split, never mixed.
    monkeypatch.setattr(batches, "FORWARD_BYTES", 2 * batches.part_weight("f|chat|month|x"))
    w = Pipeline()
    w.users.route = route
    await w.users.process([Record(0, i, e.to_json()) for i, e in enumerate(events)], NOW)
    assert len(w.rollup_topic) > 3
    for (_, value), partition in zip(w.rollup_topic, w.partitions, strict=True):
        parts = RollupMessage.decode(value).parts
        assert {route(message_key(k)) for k in parts} == {partition}
    await w.roll()
    assert [w.flags.keys[spend_feature(f)]["events"] for f in ("chat", "search", "faq")] == \
        [2, 1, 2]


async def test_a_grant_raises_the_budget_also_after_the_state_is_restored() -> None:
    # The state tracks which partitions ever held a grant, so a user without one costs no
    # lookup; a grant set by a control record or restored from the changelog is tracked.
    budgets = parse_budgets({"users": {"default_tier": "free", "tiers": {"free": {"usd": "0.05"}}},
                             "prices": {"m": {"input": 10, "output": 10}}})
    w = Pipeline(budgets)
    assert not w.ustate.may_hold(0, GRANT)
    await w.users.process([Record(0, 0, grant("u1", "0.10", ts=NOW).to_json()),
                           Record(0, 1, event("u1").to_json())], NOW)
    assert w.ustate.may_hold(0, GRANT) and not w.ustate.may_hold(1, GRANT)
    spend = w.flags.keys[spend_user("u1")]
    assert (spend["budget_usd"], spend["granted_usd"]) == ("0.15", "0.10")

    restored = BatchedState(lambda p, k, v: None, clock=NOW.timestamp, tracked=(GRANT,))
    recover(restored, w.changelog)
    assert restored.may_hold(0, GRANT)
    again = Pipeline(budgets)
    again.ustate.partitions = restored.partitions
    await again.users.process([Record(0, 2, event("u1").to_json())], NOW)
    spend = again.flags.keys[spend_user("u1")]
    assert (spend["events"], spend["budget_usd"], spend["granted_usd"]) == (2, "0.15", "0.10")
