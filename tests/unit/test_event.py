"""The usage event contract: round trip, accepted forms, and reasons for rejection."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from spendstream.producers.event import MalformedEvent, UsageEvent, decode_event

BASE = {"schema": 1, "event_id": "b3f1", "ts": "2026-11-23T10:00:00Z", "user_id": "acct-7",
        "feature": "chat", "model": "gpt-4o", "provider": "openai", "input_tokens": 1200,
        "output_tokens": 300, "cached_input_tokens": 0, "status": "ok",
        "finish_reason": "stop", "cost_usd": "0.0123"}


def raw(**kw):
    return orjson.dumps({**BASE, **kw})


def test_design_example_round_trips():
    e = decode_event(raw())
    assert e.ts == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert e.cost_usd == Decimal("0.0123") and e.total_tokens == 1500 and e.ok
    again = decode_event(e.to_json())
    assert again == e and e.key == b"acct-7"
    assert orjson.loads(e.to_json())["cost_usd"] == "0.0123"  # money stays a string


@pytest.mark.parametrize(("ts", "expected"), [
    (1795428000, datetime(2026, 11, 23, 10, tzinfo=UTC)),
    (1795428000.5, datetime(2026, 11, 23, 10, 0, 0, 500000, tzinfo=UTC)),
    ("2026-11-23T11:00:00+01:00", datetime(2026, 11, 23, 10, tzinfo=UTC)),
])
def test_timestamps(ts, expected):
    assert decode_event(raw(ts=ts)).ts == expected


@pytest.mark.parametrize(("value", "reason"), [
    (b"\xff\xfe", "not JSON"),
    (b"[1,2]", "not a JSON object"),
    (None, "empty message"),
    (b"x" * 70000, "over the"),
    (raw(schema=2), "unknown schema 2"),
    (orjson.dumps({k: v for k, v in BASE.items() if k != "schema"}), "unknown schema None"),
    (raw(input_tokens=-1), "input_tokens"),
    (raw(output_tokens=10**12), "output_tokens"),
    (raw(output_tokens="300"), "output_tokens"),
    (raw(output_tokens=True), "output_tokens"),
    (raw(ts="yesterday"), "RFC 3339"),
    (raw(ts="2026-11-23T10:00:00"), "UTC offset"),
    (raw(cost_usd="-0.01"), "cost_usd"),
    (raw(cost_usd="NaN"), "cost_usd"),
    (raw(user_id=""), "user_id"),
    (raw(user_id="a\nb"), "control characters"),
    (raw(feature=7), "feature"),
])
def test_malformed_events_carry_a_reason(value, reason):
    with pytest.raises(MalformedEvent) as e:
        decode_event(value)
    assert reason in e.value.reason


def test_unicode_ids_are_fine_and_defaults_fill_in():
    e = UsageEvent(user_id="ユーザー", feature="chat", model="gpt-4o")
    assert e.status == "ok" and len(e.event_id) == 32 and e.ts.tzinfo is not None
    assert decode_event(e.to_json()).user_id == "ユーザー"
