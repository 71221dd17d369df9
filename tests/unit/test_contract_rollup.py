"""The rollup message and the stage-two window keys: one module writes and reads them."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from spendstream.contract.rollup import (
    GLOBAL,
    LATE,
    MalformedRollup,
    RollupMessage,
    message_key,
    window_key,
    window_of_key,
    window_parts,
)
from spendstream.domain.windows import window_of

TS = datetime(2026, 11, 23, 10, 7, tzinfo=UTC)


def test_window_keys_round_trip_with_pipes_in_the_id() -> None:
    day = window_of("day", TS)
    key = window_key("drift", "openai/gpt|4o", "day", day.key)
    assert window_parts(key) == ["drift", "openai/gpt|4o", "day", day.key]
    assert window_parts(LATE + key) == window_parts(key)
    assert window_of_key(LATE + key) == day


def test_message_key_is_the_feature_or_global() -> None:
    month = window_of("month", TS)
    assert message_key(window_key("f", "chat", "month", month.key)) == "chat"
    assert message_key(window_key("g", GLOBAL, "hour", window_of("hour", TS).key)) == GLOBAL
    assert message_key(window_key("unp", "mystery", "day", window_of("day", TS).key)) == GLOBAL


def test_message_round_trips_in_the_documented_shape() -> None:
    parts = {"f|chat|month|2026-11": {"usd": "0.01", "tok": 10, "n": 1}}
    raw = RollupMessage(3, 42, parts).encode()
    assert orjson.loads(raw) == {"p": 3, "v": 42, "parts": parts}
    assert RollupMessage.decode(raw) == RollupMessage(3, 42, parts)


@pytest.mark.parametrize("raw", [
    None, b"", b"not json", b"[]", b'{"p": 1, "v": 2}', b'{"p": "x", "v": 2, "parts": {}}',
    b'{"p": 1, "v": 2, "parts": []}', b'{"p": 1, "v": 2, "parts": {"k": 1}}',
])
def test_a_malformed_message_is_refused_with_a_reason(raw: bytes | None) -> None:
    with pytest.raises(MalformedRollup, match="malformed rollup message"):
        RollupMessage.decode(raw)


def test_an_unknown_period_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown window period"):
        window_of_key("f|chat|fortnight|2026-11")
