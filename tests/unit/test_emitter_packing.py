"""A broker that refuses a packed record as too large: its events go again one by one, and
packing shrinks below the broker's limit.

No real broker here: Tansu does not enforce ``max.message.bytes``, so the fake producer of
the spill tests stands in, refusing big records at acknowledgement as Kafka does. The
producer's own limit (refused at ``send``) is tested against Tansu in
tests/integration/test_emitter_kafka.py.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError

from spendstream.errors import ConfigError
from spendstream.producers import Emitter, UsageEvent
from spendstream.settings import load_settings
from tests.unit.test_emitter_spill import (
    LOGGER,
    NOWHERE,
    FakeBroker,
    FakeProducer,
    _emitter,
    _ids,
)
from tests.unit.test_emitter_spill import fast_backoff as fast_backoff  # autouse fixture

LIMIT = 600
"""Bytes: the largest record value the fake broker takes."""


class RefusingProducer(FakeProducer):
    """Acknowledges records up to :data:`LIMIT` bytes, fails bigger ones as too large."""

    async def send(self, topic: str, value: bytes, key: bytes | None, partition: int | None,
                   headers: list[tuple[str, bytes]]) -> asyncio.Future[None]:
        if len(value) <= LIMIT:
            return await super().send(topic, value, key, partition, headers)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(MessageSizeTooLargeError())
        return fut


def _event(i: int, name: str = "") -> UsageEvent:
    return UsageEvent(event_id=f"ev-{i:05d}", user_id="acct-1", feature=name or "chat",
                      model=name or "gpt-4o", input_tokens=i)


async def test_a_refused_packed_record_is_resent_event_by_event(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker()
    broker.up = True
    broker.producer = lambda: RefusingProducer(broker)  # type: ignore[method-assign]
    emitter = _emitter(broker, tmp_path)
    await emitter.start()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for batch in range(6):  # each round refused packs smaller, until they fit
            for i in range(30 * batch, 30 * batch + 30):
                emitter.emit(_event(i))
            assert await emitter.flush(5)
        huge = _event(999, name="n" * 256)
        assert len(huge.to_json()) > LIMIT
        emitter.emit(huge)  # alone over the limit: given up, as before
        assert await emitter.flush(5)
    await emitter.stop()
    # None lost, none twice. Not in order: a refused record's events come after the later
    # records of its partition that the broker took in the same round.
    ids = _ids(broker.log)
    assert sorted(ids) == [f"ev-{i:05d}" for i in range(180)]
    s = emitter.stats
    assert (s.sent, s.dropped) == (180, 1)
    assert "Kafka refused a packed record" in caplog.text
    assert "rejected by Kafka and dropped" in caplog.text
    packed = [value for _, value in broker.log if value.startswith(b"[")]
    assert packed and all(len(orjson.loads(v)) > 1 for v in packed)  # packing goes on


def test_settings_turn_packing_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPENDSTREAM_STATE_DIR", str(tmp_path))
    assert Emitter.from_settings(load_settings())._sender.pack is True
    monkeypatch.setenv("SPENDSTREAM_PACK_EVENTS", "false")
    assert Emitter.from_settings(load_settings())._sender.pack is False
    assert Emitter.from_settings(load_settings(), pack=True)._sender.pack is True  # options win


def test_a_custom_partitioner_needs_packing_off() -> None:
    def last(key: bytes, all_partitions: list[int], available: list[int]) -> int:
        return all_partitions[-1]

    with pytest.raises(ConfigError, match="pack=False"):
        Emitter(NOWHERE, partitioner=last)
    Emitter(NOWHERE, partitioner=last, pack=False)
