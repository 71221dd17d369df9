"""The usage event contract: round trip, accepted forms, and reasons for rejection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from pydantic import ValidationError

from spendstream.contract.decode import Horizon, decode_event, decode_events
from spendstream.contract.event import Decoded, MalformedEvent, UsageEvent

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
    (raw(ts="0001-01-01T00:00:00Z"), "out of range"),  # strings are range-checked like epochs
    (raw(ts="9999-12-31T23:59:59Z"), "out of range"),
    (raw(ts="1969-12-31T23:59:59+00:00"), "out of range"),
    (raw(ts=32_503_680_000), "out of range"),
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


# The worker's fast path must accept a subset of what the model accepts and build the very
# same event; every variant below goes through both.
VARIANTS = [
    {}, {"provider": None}, {"finish_reason": None}, {"cost_usd": None}, {"cost_usd": "1E-7"},
    {"cost_usd": 0.5}, {"cost_usd": 3}, {"cost_usd": "100000"}, {"cost_usd": "100000.01"},
    {"ts": "2026-11-23T10:00:00.123456Z"}, {"ts": "2026-11-23T11:00:00+01:00"},
    {"ts": 1795428000}, {"ts": "2026-11-23"}, {"status": "error"}, {"status": ""},
    {"estimated": True}, {"estimated": 1}, {"estimated": "true"}, {"local_input_tokens": 5},
    {"local_input_tokens": -5}, {"input_tokens": 50_000_000}, {"input_tokens": 50_000_001},
    {"input_tokens": 1.0}, {"user_id": "u" * 256}, {"user_id": "u" * 257},
    {"user_id": "a\x7fb"}, {"model": "m\x00"}, {"event_id": 5}, {"provider": "p" * 65},
    {"schema": True}, {"schema": 1.0}, {"extra_field": [1, 2]}, {"status": None},
    {"cache_write_input_tokens": 5}, {"cache_write_input_tokens": -1},
    {"cache_write_input_tokens": "5"}, {"cache_hit": True, "saved_usd": "0.25"},
    {"cache_hit": "yes"}, {"saved_usd": 1}, {"saved_usd": "-1"}, {"ts": "2026-11-23T10:00:00"},
    {"ts": "9999-12-20T00:00:00Z"}, {"user_id": "a\\u0000b"}, {"cache_hit": True},
    {"cache_hit": False}, {"cache_hit": None}, {"saved_usd": -1},
    {"cost_usd": "1_0"}, {"cost_usd": " 1 "}, {"cost_usd": "\uff11"}, {"cost_usd": "-0"},
    {"cost_usd": "1e-20000"}, {"cost_usd": "1.5e-18"}, {"cost_usd": "1e-18"},
    {"cost_usd": "0.100000000000000000000"}, {"cost_usd": "0E-30000"}, {"cost_usd": ".5"},
    {"saved_usd": "99999.99000000000000000000000001"}, {"cost_usd": "Infinity"},
    {"provider": "a\u0000b"}, {"status": "ok\u0007"}, {"finish_reason": "stop\n"},
    {"user_id": "a\u0085b"}, {"feature": "a\u009b[31mb"}, {"model": "\u00a3\u00e9"},
]


@pytest.mark.parametrize("text", ["a\u0085b", "\u009b[31mred", "a\u0080", "x\u009f"])
def test_no_id_holds_a_c1_control_character(text):
    """U+0080-U+009F are control characters too (U+009B starts a terminal escape)."""
    with pytest.raises(MalformedEvent, match="control characters"):
        decode_event(raw(user_id=text))
    out = decode_events(b"[" + raw() + b"," + raw(event_id="2", feature=text) + b"]")
    assert isinstance(out[0], Decoded) and isinstance(out[1], MalformedEvent)


def test_ids_in_latin_1_and_beyond_are_fine():
    user = "\u00a3\u00e9\u00a0\u00bf-\u4e2d"  # UTF-8 \xc2 and \xc3 lead bytes, and CJK
    assert decode_event(raw(user_id=user)).user_id == user
    assert decode_events(b"[" + raw(user_id=user) + b"]")[0].user_id == user


@pytest.mark.parametrize(("text", "reason"), [
    ("1_0", "decimal string"),  # Decimal() reads it as 10
    (" 1 ", "decimal string"), ("\uff11", "decimal string"), ("-0", "decimal string"),
    ("+1", "decimal string"), ("Infinity", "decimal string"),
    ("1e-20000", "more than 18 decimal places"),  # PostgreSQL cannot store it
    ("99999.99000000000000000000000001", "more than 18 decimal places"),  # sums round
    ("100000.000000000000000001", "between 0 and 100000"),
])
def test_money_is_plain_ascii_decimal_with_at_most_18_places(text, reason):
    with pytest.raises(MalformedEvent, match=reason):
        decode_event(raw(cost_usd=text))
    with pytest.raises(MalformedEvent, match=reason):
        decode_event(raw(cache_hit=True, saved_usd=text))
    with pytest.raises(ValidationError, match=reason):
        UsageEvent(user_id="u", feature="f", model="m", cost_usd=text)


@pytest.mark.parametrize(("text", "value"), [
    ("1E-7", "1E-7"), ("0.000000000000000001", "1E-18"), (".5", "0.5"),
    ("0.100000000000000000000", "0.1"),  # trailing zeros are not places
    ("0E-30000", "0"), ("1e5", "100000"),
])
def test_money_in_any_plain_form_is_its_exact_value(text, value):
    event = decode_event(raw(cost_usd=text))
    assert event.cost_usd == Decimal(value)
    assert decode_event(event.to_json()).cost_usd == Decimal(value)  # and it round-trips


def test_a_packed_record_decodes_as_its_elements_do_alone():
    # The fast path takes a whole record at once; every element must come out as it does
    # alone, and one unusual element must not change its neighbours.
    elements = [{**BASE, "event_id": f"e{i}", **change} for i, change in enumerate(VARIANTS)]
    alone = [decode_events(orjson.dumps(e))[0] for e in elements]
    packed = decode_events(orjson.dumps(elements))
    assert len(packed) == len(alone)
    for a, p in zip(alone, packed, strict=True):
        if isinstance(a, MalformedEvent):
            assert isinstance(p, MalformedEvent) and a.reason in p.reason
        else:
            assert p == a and p.to_model().to_json() == a.to_model().to_json()
    good = [e for e in elements if isinstance(decode_events(orjson.dumps(e))[0], Decoded)]
    assert decode_events(orjson.dumps(good)) == [decode_events(orjson.dumps(e))[0] for e in good]


def test_a_cache_hit_keeps_its_flag_and_saving_on_the_fast_path():
    (e,) = decode_events(orjson.dumps([{**BASE, "cache_hit": True, "saved_usd": "0.25"}]))
    assert e.cache_hit is True and e.saved_usd == Decimal("0.25")


@pytest.mark.parametrize("change", VARIANTS, ids=[str(v) for v in VARIANTS])
def test_fast_path_builds_what_the_model_builds(change):
    from spendstream.contract.decode import _fast
    data = {**BASE, **change}
    try:
        expected = UsageEvent.model_validate(data) if data.get("schema") == 1 else None
    except ValueError:
        expected = None
    decoded_fast = _fast(data)
    fast = None if decoded_fast is None else decoded_fast.to_model()
    if fast is not None:  # accepted by the fast path: the model must agree exactly
        assert expected is not None
        assert fast == expected and fast.model_dump() == expected.model_dump()
        assert fast.to_json() == expected.to_json()
    decoded = decode_events(orjson.dumps(data))[0]
    assert (decoded == Decoded.of(expected) if expected is not None
            else isinstance(decoded, MalformedEvent))


def test_a_packed_record_decodes_element_by_element():
    good = [{**BASE, "event_id": f"e{i}"} for i in range(3)]
    out = decode_events(orjson.dumps([good[0], {**BASE, "input_tokens": -1}, good[1], 7,
                                      good[2]]))
    assert [e.event_id for e in out if isinstance(e, Decoded)] == ["e0", "e1", "e2"]
    bad = [e for e in out if isinstance(e, MalformedEvent)]
    assert [b.reason.split(":")[0] for b in bad] == ["element 1 of 5", "element 3 of 5"]
    assert "input_tokens" in bad[0].reason and "not a JSON object" in bad[1].reason
    # The rejected element itself is kept, for the dead-letter topic.
    assert orjson.loads(bad[0].element)["input_tokens"] == -1 and bad[1].element == b"7"


@pytest.mark.parametrize(("value", "reason"), [
    (b"[]", "holds 0 events"),
    (b"[" + b",".join([b"1"] * 10_001) + b"]", "holds 10001 events"),
    (b"[1,", "not JSON"),
    (b"[" + b" " * (1024 * 1024) + b"]", "over the 1048576 limit"),
])
def test_a_broken_packed_record_is_one_rejection(value, reason):
    (out,) = decode_events(value)
    assert isinstance(out, MalformedEvent) and reason in out.reason and out.element is None


def test_everyday_events_take_the_fast_path():
    from spendstream.contract.decode import _fast
    for change in ({}, {"provider": None, "cost_usd": None}, {"local_input_tokens": 5},
                   {"ts": "2026-11-23T11:00:00+01:00"}):
        assert _fast({**BASE, **change}) is not None


def test_events_dated_beyond_the_horizon_are_rejected_with_the_skew():
    now = datetime(2026, 11, 23, 10, tzinfo=UTC)
    horizon = Horizon(now, 300)
    ahead = lambda s: (now + timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    assert decode_event(raw(ts=ahead(299)), horizon).ts == now + timedelta(seconds=299)
    with pytest.raises(MalformedEvent) as e:
        decode_event(raw(ts=ahead(2 * 86400)), horizon)
    assert "172800s ahead" in e.value.reason and "SPENDSTREAM_MAX_FUTURE_SECONDS" in e.value.reason
    epoch = (now + timedelta(days=3)).timestamp()  # epoch seconds too, and packed elements
    out = decode_events(orjson.dumps([{**BASE, "ts": epoch}, BASE]), horizon)
    assert isinstance(out[0], MalformedEvent) and "ahead" in out[0].reason
    assert isinstance(out[1], Decoded)
    assert decode_event(raw(ts=ahead(2 * 86400))).ts > now  # no horizon: no clock check


def test_cache_writes_are_an_optional_field_of_schema_1():
    """Old events (no field) stay valid with 0 writes and encode as before; new ones round
    trip."""
    old = decode_event(raw())
    assert old.cache_write_input_tokens == 0
    assert b"cache_write" not in old.to_json()
    new = decode_event(raw(input_tokens=5000, cache_write_input_tokens=4000))
    assert new.cache_write_input_tokens == 4000
    assert decode_event(new.to_json()) == new


def test_an_event_without_an_id_takes_its_record_coordinates():
    """Stable across redelivery: the same record decodes to the same id; a packed record's
    elements get their index; with no coordinates an id-less event is malformed."""
    anonymous = {k: v for k, v in BASE.items() if k != "event_id"}
    where = ("spendstream.usage", 3, 1234)
    one = decode_events(orjson.dumps(anonymous), origin=where)[0]
    assert one.event_id == "kafka:spendstream.usage/3/1234"
    assert decode_events(orjson.dumps(anonymous), origin=where)[0] == one
    again = decode_event(orjson.dumps({**anonymous, "event_id": None}), origin=where)
    assert Decoded.of(again) == one
    packed = decode_events(orjson.dumps([anonymous, BASE, anonymous]), origin=where)
    assert [e.event_id for e in packed] == ["kafka:spendstream.usage/3/1234/0", "b3f1",
                                            "kafka:spendstream.usage/3/1234/2"]
    with pytest.raises(MalformedEvent, match="event_id: missing"):
        decode_event(orjson.dumps(anonymous))
    long = decode_events(orjson.dumps(anonymous), origin=("t" * 249, 0, 1))[0]
    assert long.event_id.startswith("kafka:") and len(long.event_id) == 70


@pytest.mark.parametrize(("value", "reason"), [
    (raw(cached_input_tokens=1201), "exceed input_tokens"),
    (raw(input_tokens=100, cached_input_tokens=60, cache_write_input_tokens=41),
     "exceed input_tokens"),
    (raw(cost_usd=0.0123), "not a JSON number"),
    (raw(cost_usd=1), "not a JSON number"),
    (raw()[:-1] + b',"user_id":"acct-8"}', "user_id: repeated key"),
    (raw()[:-1] + b',"user\\u005fid":"acct-8"}', "user_id: repeated key"),  # escaped
    (b'{"schema": 1, "user_id": "a", "feature": "f", "model": "m", "user_id" : "b"}',
     "user_id: repeated key"),
])
def test_contract_checks(value, reason):
    with pytest.raises(MalformedEvent) as e:
        decode_event(value, origin=("t", 0, 0))
    assert reason in e.value.reason


@pytest.mark.parametrize("space", [" ", "  ", "\t", "\n", "\r", "\r\n", " \t", "\n  "])
@pytest.mark.parametrize("packed", [False, True])
def test_a_repeated_key_is_caught_whatever_whitespace_surrounds_its_colon(space, packed):
    """JSON allows any of space, tab, newline and carriage return between a key and its
    colon; a second ``cost_usd`` so spelled must not replace the first unseen."""
    dup = raw(cost_usd="0.001")[:-1] + f',"cost_usd"{space}:{space}"50"}}'.encode()
    out = decode_events(b"[" + raw() + b"," + dup + b"]" if packed else dup,
                        origin=("t", 0, 0))
    bad = out[-1]
    assert isinstance(bad, MalformedEvent) and "cost_usd: repeated key" in bad.reason
    assert all(isinstance(e, Decoded) for e in out[:-1])


def test_a_repeated_key_costs_only_its_own_element():
    dup = raw()[:-1] + b',"user_id":"acct-8"}'
    out = decode_events(b"[" + raw() + b"," + dup + b"," + raw(event_id="x") + b"]")
    assert [type(e).__name__ for e in out] == ["Decoded", "MalformedEvent", "Decoded"]
    assert "element 1 of 3: user_id: repeated key" in out[1].reason
    # A repeated key inside a string value is not a repeated key.
    assert decode_event(raw(finish_reason='"user_id":"x"')).user_id == "acct-7"
