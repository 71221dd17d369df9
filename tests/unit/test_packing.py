"""Packed records: Kafka's partition for each user, emission order, the size ceiling."""

from __future__ import annotations

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from spendstream.producers import UsageEvent
from spendstream.producers._packing import (
    EVENTS_HEADER,
    Message,
    Packed,
    pack,
    partition_of,
    singles,
    split,
)


def _messages(n: int, users: int = 5) -> list[Message]:
    events = [UsageEvent(user_id=f"acct-{i % users}", feature="chat", model="gpt-4o",
                         input_tokens=i) for i in range(n)]
    return [(e.key, e.to_json()) for e in events]


def _elements(record: Packed) -> list[bytes]:
    """The single-event JSON of each event the record carries, from its value alone."""
    if record.key is not None:
        return [record.value]
    return [orjson.dumps(e) for e in orjson.loads(record.value)]


@pytest.mark.parametrize("partitions", [1, 2, 3, 7, 12, 64])
def test_partition_of_agrees_with_the_default_partitioner(partitions: int) -> None:
    every = list(range(partitions))
    keys = [f"acct-{i}".encode() for i in range(300)] + [b"", b"x", "üser-é".encode(),
                                                         b"\xff" * 17]
    for key in keys:
        assert partition_of(key, partitions) == DefaultPartitioner()(key, every, every)


def test_partition_of_matches_the_java_client() -> None:
    # Utils.murmur2 values pinned by Kafka's own UtilsTest.
    java = {b"21": -973932308, b"foobar": -790332482, b"abc": 479470107,
            b"a-little-bit-long-string": -985981536}
    for key, hashed in java.items():
        for partitions in (1, 3, 10, 1000):
            assert partition_of(key, partitions) == (hashed & 0x7FFFFFFF) % partitions
    with pytest.raises(ValueError):
        partition_of(b"k", 0)


def test_pack_groups_by_partition_and_keeps_emission_order() -> None:
    messages = _messages(60, users=9)
    records = pack(messages, 4)
    assert len(records) == len({r.partition for r in records}) <= 4
    for record in records:
        assert record.key is None and record.headers == (
            (EVENTS_HEADER, str(len(record.messages)).encode()),)
        assert record.value == b"[" + b",".join(v for _, v in record.messages) + b"]"
        assert _elements(record) == [v for _, v in record.messages]
        assert list(record.positions) == sorted(record.positions)
        assert [messages[i] for i in record.positions] == list(record.messages)
        assert {partition_of(k, 4) for k, _ in record.messages} == {record.partition}
    assert sorted(i for r in records for i in r.positions) == list(range(60))


def test_pack_splits_a_partition_at_max_bytes() -> None:
    messages = _messages(40, users=1)
    size = len(messages[0][1])  # the events differ only in input_tokens: similar sizes
    max_bytes = 5 * size + 20
    records = pack(messages, 3, max_bytes)
    assert len(records) > 1
    assert all(len(r.value) <= max_bytes for r in records)
    assert all(len(r.messages) >= 4 for r in records[:-1])  # full, not one event each
    assert [m for r in records for m in r.messages] == messages
    assert [i for r in records for i in r.positions] == list(range(40))
    # Exactly at the ceiling still fits.
    three = b"[" + b",".join(v for _, v in messages[:3]) + b"]"
    assert [len(r.messages) for r in pack(messages[:3], 1, len(three))] == [3]
    assert [len(r.messages) for r in pack(messages[:3], 1, len(three) - 1)] == [2, 1]


def test_a_lone_event_keeps_the_classic_form() -> None:
    [(key, value)] = messages = _messages(1)
    [record] = pack(messages, 6)
    assert (record.key, record.value, record.headers) == (key, value, ())
    assert record.partition == partition_of(key, 6)
    assert record.messages == ((key, value),) and record.positions == (0,)


def test_an_oversized_message_goes_alone_between_its_neighbours() -> None:
    small = _messages(4, users=1)
    big = UsageEvent(user_id="acct-0", feature="x" * 256, model="m" * 256).to_json()
    messages = [small[0], small[1], (b"acct-0", big), small[2], small[3]]
    max_bytes = len(b"[" + b",".join(v for _, v in small[:2]) + b"]")
    assert len(big) > max_bytes
    records = pack(messages, 2, max_bytes)
    assert [r.positions for r in records] == [(0, 1), (2,), (3, 4)]
    assert (records[1].key, records[1].value, records[1].headers) == (b"acct-0", big, ())


def test_pack_of_nothing_is_nothing() -> None:
    assert pack([], 3) == []


def test_split_and_singles_give_classic_records() -> None:
    messages = _messages(6, users=1)
    [packed] = pack(messages, 2)
    parts = split(packed)
    assert [(p.key, p.value, p.headers) for p in parts] == [(k, v, ()) for k, v in messages]
    assert [p.positions for p in parts] == [(i,) for i in range(6)]
    assert {p.partition for p in parts} == {packed.partition}
    assert [(p.partition, p.key, p.value) for p in singles(messages)] == [
        (None, k, v) for k, v in messages]
