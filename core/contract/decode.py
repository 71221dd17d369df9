"""Raw Kafka values to usage events: one event (a JSON object) or a packed record (an
array of them), each element its own outcome, a :class:`Decoded` or a
:class:`MalformedEvent` with the reason the dead-letter topic gets.

The everyday event takes a fast path (msgspec checks the types and bounds in C, a few
lines check the rest); anything unusual takes the model's full validation, which also
gives the precise reason. Both accept exactly what :class:`UsageEvent` accepts
(``tests/unit/test_event.py`` holds them to that).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
import orjson
from pydantic import ValidationError

from spendstream.contract.event import (
    CONTROL_CHARS,
    EARLIEST,
    LATEST,
    MAX_EVENT_BYTES,
    MAX_FUTURE_SECONDS,
    MAX_TOKENS_PER_EVENT,
    SCHEMA_VERSION,
    Decoded,
    MalformedEvent,
    UsageEvent,
    money,
)

MAX_RECORD_BYTES = 1024 * 1024
"""A packed record (a JSON array of events) may be as big as Kafka's default message size."""
MAX_RECORD_EVENTS = 10_000
"""Elements of one packed record (the SDK emitter sends at most 500)."""


@dataclass(frozen=True, slots=True)
class Horizon:
    """The latest event time a decoder accepts: ``now`` plus the allowed clock skew.

    The worker builds one per batch from its own clock (the decoder reads no clock), so
    one event dated days ahead cannot open a future window and cut someone off now.
    """

    now: datetime
    max_future_seconds: float = MAX_FUTURE_SECONDS

    @property
    def latest(self) -> datetime:
        """Events dated after this go to the dead-letter topic."""
        return self.now + timedelta(seconds=self.max_future_seconds)

    def check(self, event: Decoded) -> Decoded:
        """``event``, or :class:`MalformedEvent` when it is dated too far ahead."""
        if event.ts > self.latest:
            ahead = (event.ts - self.now).total_seconds()
            raise MalformedEvent(
                f"ts: {event.ts:%Y-%m-%dT%H:%M:%SZ} is {ahead:.0f}s ahead of the worker's "
                f"clock ({self.now:%Y-%m-%dT%H:%M:%SZ}); at most "
                f"{self.max_future_seconds:g}s is allowed (SPENDSTREAM_MAX_FUTURE_SECONDS)")
        return event


Origin = tuple[str, int, int]
"""Where a record was read: (topic, partition, offset)."""


def origin_id(origin: Origin, index: int | None = None) -> str:
    """The ``event_id`` of an event that came without one: its Kafka coordinates (plus its
    index in a packed record), the same at every redelivery of the record."""
    topic, partition, offset = origin
    text = f"kafka:{topic}/{partition}/{offset}" + ("" if index is None else f"/{index}")
    return text if len(text) <= 256 else "kafka:" + hashlib.sha256(text.encode()).hexdigest()


def decode_event(raw: bytes | None, horizon: Horizon | None = None,
                 origin: Origin | None = None) -> UsageEvent:
    """Decode one message value into a :class:`UsageEvent` or raise :class:`MalformedEvent`.

    With a ``horizon``, an event dated beyond it is malformed too. An event without an
    ``event_id`` takes :func:`origin_id` of ``origin``, and is malformed without one (a
    random id would count a redelivered record twice).
    """
    return _decode_one(raw, horizon, origin).to_model()


def _decode_one(raw: bytes | None, horizon: Horizon | None, origin: Origin | None) -> Decoded:
    if raw is None:
        raise MalformedEvent("empty message (no value)")
    if len(raw) > MAX_EVENT_BYTES:
        raise MalformedEvent(f"message is {len(raw)} bytes, over the {MAX_EVENT_BYTES} limit")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MalformedEvent(f"not JSON: {e}") from e
    if type(data) is dict and _may_repeat(raw, len(data)):
        repeated = _repeated_keys(raw)
        if repeated and repeated[0]:
            raise MalformedEvent(_repeated_reason(repeated[0]))
    return _validate(data, horizon, origin and (origin, None))


def decode_events(raw: bytes | None, horizon: Horizon | None = None,
                  origin: Origin | None = None) -> list[Decoded | MalformedEvent]:
    """Decode a message that holds one event (an object) or a packed record (an array).

    Every element gets its own outcome, in order: a bad element is a
    :class:`MalformedEvent` whose ``element`` is its JSON, and never costs its neighbours.
    A message that is not an event or an array of them at all is one ``MalformedEvent``
    with ``element`` ``None`` (the message itself is what goes to the dead-letter topic).
    """
    if raw is None or raw[:1] != b"[":
        try:
            return [_decode_one(raw, horizon, origin)]
        except MalformedEvent as e:
            return [e]
    if len(raw) > MAX_RECORD_BYTES:
        return [MalformedEvent(f"packed record is {len(raw)} bytes, over the "
                               f"{MAX_RECORD_BYTES} limit")]
    try:
        items = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return [MalformedEvent(f"not JSON: {e}")]
    if not items or len(items) > MAX_RECORD_EVENTS:
        return [MalformedEvent(f"packed record holds {len(items)} events; 1 to "
                               f"{MAX_RECORD_EVENTS} are allowed")]
    keys = sum(len(item) for item in items if type(item) is dict)
    repeated = _repeated_keys(raw) if _may_repeat(raw, keys) else None
    if not (repeated and any(repeated)):
        fast = _fast_many(items, raw, origin)
        if fast is not None:
            latest = None if horizon is None else horizon.latest
            if latest is None or all(e.ts <= latest for e in fast):
                return list(fast)
    out: list[Decoded | MalformedEvent] = []
    for i, item in enumerate(items):
        try:
            key = repeated[i] if repeated else None
            if key:
                raise MalformedEvent(_repeated_reason(key))
            out.append(_validate(item, horizon, origin and (origin, i)))
        except MalformedEvent as e:
            out.append(MalformedEvent(f"element {i} of {len(items)}: {e.reason}",
                                      element=orjson.dumps(item)))
    return out


def _validate(data: Any, horizon: Horizon | None = None,
              origin: tuple[Origin, int | None] | None = None) -> Decoded:
    if not isinstance(data, dict):
        raise MalformedEvent(f"not a JSON object but {type(data).__name__}")
    event = _fast(data)
    if event is None:
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            raise MalformedEvent(
                f"unknown schema {schema!r}; this worker reads schema {SCHEMA_VERSION}"
            )
        anonymous = data.get("event_id") is None
        if anonymous and origin is not None:
            data = {**data, "event_id": origin_id(*origin)}
        try:
            event = Decoded.of(UsageEvent.model_validate(data))
        except ValidationError as e:
            raise MalformedEvent(_explain(e)) from e
        if anonymous and origin is None:
            raise MalformedEvent("event_id: missing, and no record coordinates to derive a "
                                 "stable one from")
    return event if horizon is None else horizon.check(event)


def _may_repeat(raw: bytes, keys: int) -> bool:
    """A cheap screen for a repeated key (orjson keeps the last value silently, so a second
    ``user_id`` would move the event to another user): in compact JSON every key ends in
    ``":``, so a text with more of those than the parsed objects have keys may repeat one.
    Texts the screen cannot judge (escapes, whitespace between a key and its colon) go to
    the exact check too; only a text that fails the screen pays for it. A tab, newline or
    carriage return can only be whitespace between tokens (inside a string JSON escapes
    them), so any of them sends the text to the exact check. (A two-byte search costs as
    much as the count, a one-byte one almost nothing: the rare byte is looked for first.)"""
    return (raw.count(b'":') != keys or (b"\\" in raw and b"\\u" in raw)
            or (b" " in raw and b" :" in raw)
            or b"\t" in raw or b"\n" in raw or b"\r" in raw)


class _Pairs(dict[str, Any]):
    """A JSON object as the exact check reads it, with its first repeated key."""

    repeated: str | None = None


def _pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs()
    for key, value in pairs:
        if key in obj and obj.repeated is None:
            obj.repeated = key
        obj[key] = value
    return obj


def _repeated_keys(raw: bytes) -> list[str | None] | None:
    """The first repeated top-level key of each event in ``raw`` (one object or an array of
    them), ``None`` where there is none; the stdlib parser, slow but exact."""
    try:
        doc = json.loads(raw, object_pairs_hook=_pairs)
    except ValueError:
        return None
    items = doc if isinstance(doc, list) else [doc]
    return [item.repeated if isinstance(item, _Pairs) else None for item in items]


def _repeated_reason(key: str) -> str:
    return f"{key}: repeated key (a JSON object must name each field once)"


_WID = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_WTOKENS = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_PER_EVENT)]


class _Wire(msgspec.Struct, gc=False):
    """The everyday event's field types and bounds, checked in C by msgspec (strict: no
    bool for an int, no number for a string). What msgspec cannot say (control characters,
    the timestamp's form and range, money) :func:`_build` checks."""

    schema: Literal[1]
    user_id: _WID
    feature: _WID
    model: _WID
    ts: str
    event_id: _WID | None = None
    provider: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    input_tokens: _WTOKENS = 0
    output_tokens: _WTOKENS = 0
    cached_input_tokens: _WTOKENS = 0
    cache_write_input_tokens: _WTOKENS = 0
    status: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] = "ok"
    finish_reason: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    cost_usd: str | None = None
    estimated: bool = False
    local_input_tokens: _WTOKENS | None = None
    cache_hit: bool | None = None
    saved_usd: str | None = None


_wires = msgspec.convert
_WIRES = list[_Wire]


def _fast(d: dict[str, Any]) -> Decoded | None:
    """One everyday event built without the model's validators (see :func:`_fast_many`)."""
    events = _fast_many([d], b"\\")
    return None if events is None else events[0]


def _fast_many(items: list[Any], raw: bytes, origin: Origin | None = None
               ) -> list[Decoded] | None:
    """The events of a decoded record, every one checked and built without the model's
    validators (10x cheaper: this is the worker's hot path), or ``None`` when any element
    is unusual; the caller then takes the full path, which also gives the precise reason.

    It accepts a strict subset of what :meth:`UsageEvent.model_validate` accepts and builds
    the same value (a test holds the two to that). ``raw`` is the record's text: without
    an escape or a DEL in it, no string can hold a control character.
    """
    try:
        wires = _wires(items, _WIRES)
    except msgspec.ValidationError:
        return None
    # U+0080-U+009F (C1) are \xc2\x80-\xc2\x9f in UTF-8: a text without \xc2 holds none
    plain = b"\\" not in raw and b"\x7f" not in raw and b"\xc2" not in raw
    out: list[Decoded] = []
    for i, w in enumerate(wires):
        event = _build(w, plain, origin, None if len(items) == 1 and raw[:1] != b"[" else i)
        if event is None:
            return None
        out.append(event)
    return out


def _build(w: _Wire, plain: bool, origin: Origin | None, index: int | None
           ) -> Decoded | None:
    event_id = w.event_id
    if event_id is None:
        if origin is None:
            return None
        event_id = origin_id(origin, index)
    if not plain and CONTROL_CHARS.search(event_id + w.user_id + w.feature + w.model):
        return None
    if w.cached_input_tokens + w.cache_write_input_tokens > w.input_tokens:
        return None
    cost = saved = None
    if w.cost_usd is not None:
        cost = _money(w.cost_usd)
        if cost is None:
            return None
    if w.saved_usd is not None:
        saved = _money(w.saved_usd)
        if saved is None:
            return None
    try:
        at = datetime.fromisoformat(w.ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None or not EARLIEST <= at < LATEST:
        return None
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return Decoded(event_id, at, w.user_id, w.feature, w.model, w.provider, w.input_tokens,
                   w.output_tokens, w.cached_input_tokens, w.cache_write_input_tokens,
                   w.status, w.finish_reason, cost, w.estimated, w.local_input_tokens,
                   w.cache_hit, saved)


def _money(text: str) -> Decimal | None:
    d = money(text)
    return None if isinstance(d, str) else d


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
