"""Packed records: several usage events in one Kafka record, so the worker pays its
per-record cost once for many events.

A packed record's value is a JSON array whose elements are the single-event JSON objects,
byte for byte as :meth:`UsageEvent.to_json` made them (joined, never re-encoded). It is
sent with no key, to the partition Kafka's default keyed partitioner gives every element's
``user_id``, with the header :data:`EVENTS_HEADER` holding the element count. A record that
carries one event keeps the classic form: the object alone, keyed by its ``user_id``, no
header. Either way a user's events stay on one partition, in the order they were emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from aiokafka.partitioner import murmur2

EVENTS_HEADER = "x-spendstream-events"
"""Header of a packed record: how many events its array holds, as ASCII digits."""
PACK_MAX_BYTES = 256 * 1024
"""Default ceiling of a packed record's value: far below Kafka's 1 MB default limits."""

Message = tuple[bytes, bytes]
"""``(key, value)``: the user id and the single-event JSON, as the emitter buffers them."""


@dataclass(frozen=True, slots=True)
class Packed:
    """One Kafka record to send, and the buffered messages it carries.

    ``positions`` are the messages' indices in the list given to :func:`pack`, so the
    messages of records that failed can be put back in emission order. ``partition`` is
    None only for records from :func:`singles`: the producer's partitioner places those
    by key.
    """

    partition: int | None
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    messages: tuple[Message, ...]
    positions: tuple[int, ...]


@lru_cache(maxsize=1 << 14)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java clients, aiokafka) gives ``key``.

    Cached: the pure-Python hash costs microseconds, and the same users come back.
    """
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


def pack(messages: list[Message], partitions: int,
         max_bytes: int = PACK_MAX_BYTES) -> list[Packed]:
    """Group ``messages`` into records, one partition's at a time, each in emission order.

    A record's value stays within ``max_bytes``; a partition with more goes out in several
    records, and a message over ``max_bytes`` by itself goes alone, in the classic form.
    """
    by_partition: dict[int, list[int]] = {}
    for i, (key, _) in enumerate(messages):
        by_partition.setdefault(partition_of(key, partitions), []).append(i)
    records: list[Packed] = []
    for partition, positions in by_partition.items():
        chunk: list[int] = []
        size = 1  # the closing bracket; each element adds itself and a "[" or ","
        for i in positions:
            grown = size + len(messages[i][1]) + 1
            if chunk and grown > max_bytes:
                records.append(_record(messages, partition, chunk))
                chunk, grown = [], 2 + len(messages[i][1])
            chunk.append(i)
            size = grown
        records.append(_record(messages, partition, chunk))
    return records


def singles(messages: list[Message]) -> list[Packed]:
    """One classic record per message, placed by the producer's partitioner (packing off)."""
    return [_record(messages, None, [i]) for i in range(len(messages))]


def split(record: Packed) -> list[Packed]:
    """A packed record's events as classic records, for a broker that refused its size.

    Their positions are the packed record's, so they still map to :func:`pack`'s input.
    """
    return [Packed(record.partition, key, value, (), ((key, value),), (i,))
            for (key, value), i in zip(record.messages, record.positions, strict=True)]


def _record(messages: list[Message], partition: int | None, chunk: list[int]) -> Packed:
    held = tuple(messages[i] for i in chunk)
    if len(held) == 1:
        key, value = held[0]
        return Packed(partition, key, value, (), held, tuple(chunk))
    value = b"[" + b",".join(v for _, v in held) + b"]"
    return Packed(partition, None, value, ((EVENTS_HEADER, str(len(held)).encode()),),
                  held, tuple(chunk))
