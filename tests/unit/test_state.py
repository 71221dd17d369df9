"""The batched state: one changelog record per partition per batch, recovery, snapshots."""

from __future__ import annotations

import pytest

from spendstream.streams import state as state_mod
from spendstream.streams.state import BatchedState, Dedup, id_hash

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def logged(clock: Clock | None = None) -> tuple[BatchedState, list]:
    records: list = []
    s = BatchedState(lambda p, k, v: records.append((p, k, v)), 3600, clock or Clock())
    return s, records


def restore(records: list, clock: Clock | None = None) -> BatchedState:
    fresh, _ = logged(clock)
    for p, k, v in records:
        fresh.apply(p, k, v)
    return fresh


def test_one_record_per_partition_per_batch_and_recovery_restores_values_ids_offsets():
    s, records = logged()
    for i in range(100):
        s.put(i % 2, f"u|user-{i}", {"n": i})
        s.remember(i % 2, id_hash(f"e{i}"), offset=i)
    assert s.commit() == 2 and len(records) == 2
    s.put(0, "u|user-0", None)  # a delete is logged too
    s.commit()
    back = restore(records)
    assert back.get(1, "u|user-1") == {"n": 1} and back.get(0, "u|user-0") is None
    assert back.seen(0, id_hash("e98")) and not back.seen(0, id_hash("e99"))
    assert (back.offset(0), back.offset(1)) == (98, 99)


def test_uncommitted_changes_are_visible_to_the_batch_but_not_logged():
    s, records = logged()
    s.put(0, "k", {"n": 1})
    assert s.get(0, "k") == {"n": 1} and not records
    assert restore(records).get(0, "k") is None


def test_snapshot_tombstones_superseded_records_and_compaction_keeps_the_state(monkeypatch):
    monkeypatch.setattr(state_mod, "SNAPSHOT_MIN_BYTES", 2000)
    monkeypatch.setattr(state_mod, "CHUNK_KEYS", 3)
    s, records = logged()
    for batch in range(50):  # the same few keys rewritten: the log outgrows the state
        for k in range(5):
            s.put(0, f"k{k}", {"n": batch})
        s.remember(0, id_hash(f"e{batch}"), batch)
        s.commit()
    assert any(k.startswith(b"s|") for _, k, _ in records)
    tombstoned = {k for _, k, v in records if v is None}
    assert tombstoned and all(k.startswith(b"b|") for k in tombstoned)
    # What a compacted topic keeps: the last record per key, tombstones removed.
    last: dict[bytes, tuple] = {}
    for record in records:
        last[record[1]] = record
    compacted = [r for r in records if last[r[1]] is r and r[2] is not None]
    assert len(compacted) < len(records) / 3
    for back in (restore(records), restore(compacted)):
        assert all(back.get(0, f"k{k}") == {"n": 49} for k in range(5))
        assert back.seen(0, id_hash("e0")) and back.seen(0, id_hash("e49"))
        assert back.offset(0) == 49


def test_dedup_forgets_ids_after_the_horizon_and_recovery_skips_expired_ones():
    clock = Clock()
    s, records = logged(clock)
    s.remember(0, id_hash("old"), 0)
    s.commit()
    clock.now += 3600 + 600 + 1  # the horizon plus one generation
    s.remember(0, id_hash("new"), 1)
    s.commit()
    assert not s.seen(0, id_hash("old")) and s.seen(0, id_hash("new"))
    back = restore(records, clock)
    assert not back.seen(0, id_hash("old")) and back.seen(0, id_hash("new"))


@pytest.mark.parametrize("n", [1, 1000])
def test_dedup_generations(n):
    d = Dedup(600)
    for i in range(n):
        d.add(i, T0 + i * 0.5)
    assert len(d) == n and (n - 1) in d and -1 not in d
