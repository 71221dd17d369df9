"""Hostile input: whatever bytes arrive, decoding either yields a valid event or raises
MalformedEvent with a reason, never anything else (the worker routes those to the DLQ)."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from spendstream.contract.decode import decode_event
from spendstream.contract.event import MalformedEvent, UsageEvent

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what JSON encoders emit
JSON = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)

FIELDS = {
    "schema": st.sampled_from([1, 1, 1, 2, 0, "1", None]),
    "event_id": st.text(max_size=300),
    "ts": st.one_of(st.text(max_size=40), INT64, st.floats(allow_nan=True),
                    st.just("2026-11-23T10:00:00Z")),
    "user_id": st.text(max_size=300), "feature": st.text(max_size=40),
    "model": st.text(max_size=40),
    "input_tokens": st.one_of(INT64, st.text(max_size=5), st.booleans()),
    "output_tokens": st.integers(min_value=-10, max_value=10**12),
    "cost_usd": st.one_of(st.none(), st.text(max_size=12), INT64, st.floats()),
}


def check(raw: bytes) -> None:
    try:
        event = decode_event(raw)
    except MalformedEvent as e:
        assert e.reason and isinstance(e.reason, str)
        return
    assert isinstance(event, UsageEvent)
    assert event.input_tokens >= 0 and event.output_tokens >= 0
    assert event.cost_usd is None or event.cost_usd >= 0
    assert decode_event(event.to_json()) == event  # what was accepted round-trips


def test_numbers_beyond_64_bits_are_rejected_with_a_reason() -> None:
    raw = (b'{"schema": 1, "user_id": "u", "feature": "f", "model": "m", '
           b'"input_tokens": 123456789012345678901234567890}')
    try:
        decode_event(raw)
    except MalformedEvent as e:
        assert e.reason
    else:
        raise AssertionError("an absurd token count was accepted")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_arbitrary_json(value: object) -> None:
    check(orjson.dumps(value))


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({}, optional=FIELDS))
def test_event_shaped_objects(obj: dict[str, object]) -> None:
    check(orjson.dumps(obj))
