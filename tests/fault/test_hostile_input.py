"""Hostile input on the usage topic of a running worker, generated with hypothesis.

150 generated messages (bytes that are not JSON, JSON that is not an object, event-shaped
objects with wrong types, huge or negative numbers, unknown schema versions, unicode and
control characters in ids, messages just over the 64 KiB limit), each followed by a good
event. Whether a generated message is valid is decided by
:func:`spendstream.contract.decode.decode_event`, the worker's own decoder: some unicode
ids are valid events and must be counted. Every invalid one must land in ``<topic>.dlq``
unchanged, with the decoder's reason in ``x-spendstream-reason``; the worker stays up; the
good events are counted to the cent. The run prints its hypothesis seed; ``FAULT_SEED``
replays it.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import hypothesis
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from spendstream.contract.decode import decode_event, decode_events
from spendstream.contract.event import MAX_EVENT_BYTES, MalformedEvent
from spendstream.contract.keys import spend_feature
from tests.fault.faultkit import Ledger, Message, Stack, message, usage
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

BUDGETS = """\
users:
  tiers: {free: {usd: 1000}}
features:
  chat: {period: month, usd: 1000}
"""
EXAMPLES = 150

HUGE = st.one_of(st.integers(min_value=50_000_001, max_value=10**30),
                 st.integers(max_value=-1, min_value=-(10**30)),
                 st.sampled_from([1e308, -1e308, 1e19, 2**63, 2**64, -(2**63) - 1]))
WEIRD_TEXT = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(max_codepoint=0x1F), min_size=1, max_size=8),
    st.sampled_from(["", " ", "\u202e", "\ufeff", "💸", "a|b", "<!channel>", "x" * 257,
                     "NaN", "1e400", "-0.01", "Infinity", "0x10"]))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                        max_size=3),
                    max_leaves=6)
FIELDS = ["schema", "event_id", "ts", "user_id", "feature", "model", "provider",
          "input_tokens", "output_tokens", "cached_input_tokens", "status", "finish_reason",
          "cost_usd"]
SCHEMAS = st.sampled_from([0, 2, -1, 99, "1", "v1", 1.5, None, True, [1], {"v": 1}, 10**20])


def dumps(value: Any) -> bytes:
    """Stdlib JSON: big integers and NaN pass (NaN makes the document invalid JSON)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def hostile(draw: st.DrawFn) -> Message:
    """One message that may or may not be a valid event."""
    kind = draw(st.sampled_from(["bytes", "text", "json", "mutated", "missing", "schema",
                                 "oversize", "unicode_ids"]))
    key = draw(st.one_of(st.none(), st.binary(max_size=12), st.just(b"hostile")))
    if kind == "bytes":
        return key, draw(st.binary(min_size=1, max_size=200))
    if kind == "text":
        return key, draw(st.text(min_size=1, max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "json":
        return key, dumps(draw(JSON))
    event = usage("hostile", cost=str(draw(st.decimals(0, 1, places=4))))
    if kind == "mutated":
        for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3,
                                  unique=True)):
            event[name] = draw(st.one_of(HUGE, WEIRD_TEXT, JSON))
    elif kind == "missing":
        del event[draw(st.sampled_from(["user_id", "feature", "model", "schema"]))]
    elif kind == "schema":
        event["schema"] = draw(SCHEMAS)
    elif kind == "oversize":
        size = draw(st.integers(MAX_EVENT_BYTES + 1, MAX_EVENT_BYTES + 6000))
        event["pad"] = ""
        event["pad"] = "p" * (size - len(dumps(event)))
    else:
        for name in draw(st.lists(st.sampled_from(["user_id", "feature", "model", "event_id"]),
                                  min_size=1, max_size=4, unique=True)):
            event[name] = draw(WEIRD_TEXT)
    return key, dumps(event)


def generate(seed: int) -> list[Message]:
    """:data:`EXAMPLES` messages from hypothesis (generation only: nothing to shrink); the
    same ``seed`` draws the same messages (fresh event ids and timestamps aside)."""
    out: list[Message] = []

    @hypothesis.seed(seed)
    @settings(max_examples=EXAMPLES, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(hostile())
    def collect(msg: Message) -> None:
        out.append(msg)

    collect()
    return out


def valid(value: bytes | None, ids: set[str]) -> dict[str, Any] | None:
    """The event as the ledger counts it, when the worker should count it; else None.

    A valid event that the ledger could not price exactly (no ``cost_usd``), that falls in
    another day, or whose id was already used is reported as ``"skip"`` by the caller.
    """
    try:  # any coordinates: an event without an id takes them as its id
        e = decode_event(value, origin=("t", 0, 0))
    except MalformedEvent:
        return None
    return {"event_id": e.event_id, "user_id": e.user_id, "feature": e.feature,
            "status": e.status, "cost_usd": e.cost_usd, "input_tokens": e.input_tokens,
            "output_tokens": e.output_tokens, "ts": e.ts, "dup": e.event_id in ids}


def test_hostile_messages_go_to_the_dlq_and_good_events_are_counted_exactly(
        broker, redis_url, uid, tmp_path):
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, BUDGETS, partitions=3)
    stack.create_topics()
    keys = stack.redis()
    ledger = Ledger()
    today = datetime.now(UTC).date()
    bad: list[Message] = []
    stream: list[Message] = []
    accepted = skipped = 0
    seed = int(os.environ.get("FAULT_SEED") or random.randrange(2**32))
    print(f"\nhypothesis seed {seed} (FAULT_SEED={seed} draws the same messages)")
    for i, (key, value) in enumerate(generate(seed)):
        if value is not None and value[:1] == b"[":
            skipped += 1  # a packed record: one outcome per element, see the test below
            continue
        event = valid(value, ledger.ids)
        if event is None:
            bad.append((key, value))
        elif (event["cost_usd"] is None or event["ts"].date() != today or event["dup"]
              or event["feature"] == "*"):
            # Valid, but not predictable to the cent here (priced by the worker, another
            # day, a repeated id) or a known bug (feature "*", its own test): not published.
            skipped += 1
            continue
        else:
            ledger.add({**event, "cost_usd": str(event["cost_usd"])})
            accepted += 1
            # The contract's key: a user's events on several partitions would be summed
            # per partition (per-user windows live with the partition).
            key = event["user_id"].encode()
        stream.append((key, value))
        good = usage(f"good-{i % 5}", "chat", f"0.{i:04d}1")
        ledger.add(good)
        stream.append(message(good))
    assert len(bad) >= EXAMPLES // 2, "hypothesis generated mostly valid events"

    worker = stack.worker()
    try:
        stack.publish(stream)
        status = wait_until(lambda: (s := worker.status())["dead_letters"] + s["events"]
                            >= len(stream) and s, 60, "every message handled",
                            check=worker.alive)
        assert ledger.settle(keys, 10, check=worker.alive) == []
        dead = stack.read(".dlq", len(bad), timeout=30)
    finally:
        stack.close()
    assert worker.proc.returncode == 0, worker.output()
    print(f"{len(stream)} messages: {len(bad)} invalid, {accepted} valid hostile events, "
          f"{len(stream) - len(bad) - accepted} good events ({skipped} valid examples not "
          f"published); worker status {status}")
    assert status["dead_letters"] == len(bad) and status["events"] == ledger.total
    assert Counter((m.key, m.value) for m in dead) == Counter(bad)  # each once, unchanged
    for m in dead:
        headers = dict(m.headers)
        # Decoded as the worker did: an event with a null event_id takes its record's
        # coordinates (the source header), so only its other faults are the reason.
        topic, partition, offset = headers["x-spendstream-source"].decode().rsplit("/", 2)
        with pytest.raises(MalformedEvent) as why:
            decode_event(m.value, origin=(topic, int(partition), int(offset)))
        assert headers["x-spendstream-reason"].decode() == why.value.reason
        topic, partition, offset = headers["x-spendstream-source"].decode().rsplit("/", 2)
        assert topic == stack.topic and partition.isdigit() and offset.isdigit()


def test_a_feature_named_star_keeps_its_own_total(broker, redis_url, uid, tmp_path):
    """``*`` is a valid feature name by the event contract (1-256 chars, no control
    characters), and also the worker's internal name for the global rollup: the two must not
    mix."""
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, BUDGETS, partitions=1)
    stack.create_topics()
    keys = stack.redis()
    ledger = Ledger()
    events = [usage("acct-s", feature, "0.25") for feature in ("*", "*", "chat")]
    for e in events:
        ledger.add(e)
    worker = stack.worker()
    try:
        stack.publish(message(e) for e in events)
        wait_until(lambda: ledger.counted(keys, ("global", "user")), 60, "the events",
                   check=worker.alive)
        wait_until(lambda: keys.events(spend_feature("chat")) == 1, 10, "the chat total")
        star = keys.get(spend_feature("*"))
    finally:
        stack.close()
    assert ledger.mismatches(keys, ("global", "user")) == []
    assert star is not None and Decimal(star["spent_usd"]) == Decimal("0.50"), star


def test_a_1mb_message_is_dead_lettered_without_stalling_the_worker(broker, redis_url, uid,
                                                                   tmp_path):
    """1,000,000 bytes: under Kafka's default 1 MiB message limit, so a broker accepts it."""
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, BUDGETS, partitions=1)
    stack.create_topics()
    keys = stack.redis()
    ledger = Ledger()
    before = [usage("acct-b", cost="0.01") for _ in range(3)]
    after = [usage("acct-b", cost="0.02") for _ in range(3)]
    huge = orjson.dumps({**usage("acct-b"), "event_id": uuid.uuid4().hex, "pad": ""})
    huge = huge[:-2] + b"x" * (1_000_000 - len(huge)) + huge[-2:]
    assert len(huge) == 1_000_000
    for e in before + after:
        ledger.add(e)
    worker = stack.worker()
    try:
        stack.publish([*map(message, before), (b"acct-b", huge), *map(message, after)])
        crashed = "Crashed reason="
        wait_until(lambda: ledger.counted(keys) or crashed in worker.output(), 60,
                   "the events after the 1 MB message", check=worker.alive)
        assert crashed not in worker.output(), (
            "BUG: the worker's agent crashed on a 1 MB message and stopped counting: "
            + next(line for line in worker.output().splitlines() if crashed in line)[:400])
        dead = stack.read(".dlq", 1, timeout=10)
    finally:
        stack.close()
    assert ledger.mismatches(keys) == []
    assert [m.value for m in dead] == [huge]
    assert "over the 65536 limit" in dict(dead[0].headers)["x-spendstream-reason"].decode()


def test_a_packed_record_loses_only_its_bad_elements(broker, redis_url, uid, tmp_path):
    """A packed record (a JSON array of events, as the SDK emitter sends): its good events
    are counted, each bad element goes to the DLQ alone with its index, and a record that is
    not an array of events at all goes there once, unchanged."""
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, BUDGETS, partitions=1)
    stack.create_topics()
    keys = stack.redis()
    ledger = Ledger()
    good = [usage("acct-p", cost="0.01") for _ in range(3)]
    for e in good:
        ledger.add(e)
    bad_element = {**usage("acct-p"), "input_tokens": -1}
    packed = orjson.dumps([good[0], bad_element, good[1], 7, good[2]])
    broken = b'[{"schema": 1,'
    worker = stack.worker()
    try:
        stack.publish([(None, packed), (None, broken)])
        assert ledger.settle(keys, 60, check=worker.alive) == []
        dead = stack.read(".dlq", 3, timeout=30)
    finally:
        stack.close()
    assert worker.proc.returncode == 0, worker.output()
    reasons = {m.value: dict(m.headers)["x-spendstream-reason"].decode() for m in dead}
    assert set(reasons) == {orjson.dumps(bad_element), b"7", broken}
    assert reasons[orjson.dumps(bad_element)].startswith("element 1 of 5: input_tokens")
    assert reasons[b"7"].startswith("element 3 of 5: not a JSON object")
    assert reasons[broken].startswith("not JSON") and decode_events(broken)[0].element is None


def test_big_packed_batches_of_long_ids_keep_every_changelog_record_under_1_mib(
        broker, redis_url, uid, tmp_path):
    """6,000 events with 256-character user ids and feature names in twelve packed records:
    one batch for the worker, whose state for it weighs ~2.4 MB. The worker logs it in
    several records (Kafka refuses a record over 1 MiB: the agent would crash) and counts
    every event."""
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, BUDGETS, partitions=1)
    stack.create_topics()
    keys = stack.redis()
    ledger = Ledger()
    events = [usage(f"{i:06d}".rjust(256, "u"), f"{i // 10:05d}".rjust(256, "f"), "0.001")
              for i in range(6000)]
    for e in events:
        ledger.add(e)
    records = [(None, orjson.dumps(events[i:i + 500])) for i in range(0, len(events), 500)]
    worker = stack.worker()
    try:
        stack.publish(records)
        assert ledger.settle(keys, 90, kinds=("global", "user"), check=worker.alive) == []
    finally:
        stack.close()
    assert worker.proc.returncode == 0, worker.output()
    assert "MessageSizeTooLarge" not in worker.output()
