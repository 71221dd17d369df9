"""The emitter's caller-side contract, without a broker: bounded, cheap, never raising."""

from __future__ import annotations

import logging

import pytest

from spendstream.errors import ConfigError
from spendstream.producers import Emitter, UsageEvent

# Nothing listens here, and these tests never start the emitter: emit must not need Kafka.
NOWHERE = "127.0.0.1:9"


def _event(i: int = 0) -> UsageEvent:
    return UsageEvent(user_id=f"acct-{i % 5}", feature="chat", model="gpt-4o",
                      input_tokens=100, output_tokens=20)


class _Unencodable:
    """Stands in for a caller bug: an object that blows up when encoded."""

    key = b"k"

    def to_json(self) -> bytes:
        raise RuntimeError("boom")


def test_emit_on_a_full_buffer_never_raises_and_counts_drops() -> None:
    emitter = Emitter(NOWHERE, buffer_size=3)
    results = [emitter.emit(_event(i)) for i in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert (emitter.stats.emitted, emitter.stats.dropped, emitter.stats.buffered) == (3, 7, 3)
    assert emitter.stats.sent == 0 and emitter.stats.errors == 0


def test_drop_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    emitter = Emitter(NOWHERE, buffer_size=1)
    with caplog.at_level(logging.WARNING, logger="spendstream.producers.emitter"):
        for i in range(1_000):
            emitter.emit(_event(i))
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1
    assert emitter.stats.dropped == 999


def test_an_event_that_cannot_be_encoded_is_refused_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    emitter = Emitter(NOWHERE)
    with caplog.at_level(logging.WARNING, logger="spendstream.producers.emitter"):
        assert emitter.emit(_Unencodable()) is False  # type: ignore[arg-type]
        assert emitter.emit(None) is False  # type: ignore[arg-type]
    assert emitter.emit(_event()) is True
    assert (emitter.stats.errors, emitter.stats.dropped, emitter.stats.buffered) == (2, 2, 1)
    [warning] = caplog.records  # the second failure waits for the next warning interval
    assert "could not be encoded" in warning.getMessage()
    assert warning.exc_info is not None and "boom" in str(warning.exc_info[1])


def test_emit_buffers_without_a_running_sender() -> None:
    """emit only appends: with no event loop and no broker, 20,000 calls all return and are
    all buffered (what a call costs is measured by bench/guard_bench.py)."""
    emitter = Emitter(NOWHERE, buffer_size=100_000)
    event = _event()
    n = 20_000
    assert all(emitter.emit(event) for _ in range(n))
    assert emitter.stats.buffered == n


def test_unknown_producer_setting_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="sasl_mechanizm"):
        Emitter(NOWHERE, sasl_mechanizm="PLAIN")
    with pytest.raises(ConfigError, match="value_serializer"):
        Emitter(NOWHERE, value_serializer=lambda v: v)
    with pytest.raises(ConfigError, match="buffer_size"):
        Emitter(NOWHERE, buffer_size=0)


def test_security_settings_are_accepted() -> None:
    Emitter(NOWHERE, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
            sasl_plain_username="app", sasl_plain_password="secret")
