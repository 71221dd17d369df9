"""The usage event: one frozen, validated model, versioned by its ``schema`` field.

Producers build it and encode it; the worker decodes raw bytes into the same model.
Anything that does not decode raises :class:`MalformedEvent` with a reason fit for
the dead-letter topic.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from spendstream.errors import SpendstreamError

SCHEMA_VERSION = 1
MAX_TOKENS_PER_EVENT = 50_000_000
"""Above this a count is absurd (no model has such a context), so the event is rejected."""
MAX_COST_PER_EVENT = Decimal("100000")
MAX_EVENT_BYTES = 64 * 1024
MAX_FUTURE_SECONDS = 300
"""Default of how far ahead of the worker's clock an event's ``ts`` may be (clock skew)."""
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(3000, 1, 1, tzinfo=UTC)
"""Timestamps outside ``[_EARLIEST, _LATEST)`` are absurd, whatever form they come in."""

_ID = Annotated[StrictStr, Field(min_length=1, max_length=256)]
_TOKENS = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS_PER_EVENT)]


class MalformedEvent(SpendstreamError):
    """Raw bytes that are not a valid usage event; ``reason`` says why."""

    def __init__(self, reason: str, element: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.element = element
        """The element's JSON when it came from a packed record, else ``None``."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control_chars(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


class _Outcome:
    """What both forms of a usage event (:class:`UsageEvent`, :class:`Decoded`) derive
    from their fields."""

    __slots__ = ()
    if TYPE_CHECKING:
        status: str
        input_tokens: int
        output_tokens: int

    @property
    def ok(self) -> bool:
        """Only successful calls cost money; failed calls are counted but free."""
        return self.status == "ok"

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens (cached input is part of input)."""
        return self.input_tokens + self.output_tokens


class UsageEvent(_Outcome, BaseModel):
    """What one model call used and cost; the JSON contract of ``spendstream.usage``."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    schema_: Literal[1] = Field(default=1, alias="schema")
    event_id: _ID = Field(default_factory=lambda: uuid.uuid4().hex)
    ts: datetime = Field(default_factory=lambda: datetime.now(UTC))
    user_id: _ID
    feature: _ID
    model: _ID
    provider: Annotated[StrictStr, Field(max_length=64)] | None = None
    input_tokens: _TOKENS = 0
    output_tokens: _TOKENS = 0
    cached_input_tokens: _TOKENS = 0
    cache_write_input_tokens: _TOKENS = 0
    """Prompt-cache writes, part of ``input_tokens`` like cache reads, priced at the table's
    cache-write rate (a worker that predates the field prices them as plain input)."""
    status: Annotated[StrictStr, Field(min_length=1, max_length=32)] = "ok"
    finish_reason: Annotated[StrictStr, Field(max_length=64)] | None = None
    cost_usd: Decimal | None = None
    estimated: bool = False
    """True when the counts were made locally (a cut stream), not reported by the provider."""
    local_input_tokens: _TOKENS | None = None
    """The producer's own tiktoken count of the prompt, for the token-inflation audit."""
    cache_hit: bool | None = None
    """True for a call answered from the response cache (it costs nothing: tokens 0)."""
    saved_usd: Decimal | None = None
    """For a cache hit: what the original call cost, so the cache's savings add up."""

    @field_validator("event_id", "user_id", "feature", "model")
    @classmethod
    def _printable(cls, v: str) -> str:
        return _no_control_chars(v)

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, v: Any) -> datetime:
        if isinstance(v, bool):
            raise ValueError("must be an RFC 3339 string or epoch seconds")
        if isinstance(v, int | float):
            if not 0 <= v < _LATEST.timestamp():
                raise ValueError("epoch seconds out of range (1970 to 2999)")
            return datetime.fromtimestamp(v, UTC)
        if isinstance(v, datetime):
            parsed = v
        elif isinstance(v, str):
            try:
                parsed = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError as e:
                raise ValueError(
                    "must be an RFC 3339 timestamp such as 2026-11-23T10:00:00Z"
                ) from e
        else:
            raise ValueError("must be an RFC 3339 string or epoch seconds")
        if parsed.tzinfo is None:
            raise ValueError("must carry a UTC offset, e.g. 2026-11-23T10:00:00Z")
        if not _EARLIEST <= parsed < _LATEST:
            raise ValueError("out of range (1970 to 2999)")
        return parsed.astimezone(UTC)

    @field_validator("cost_usd", "saved_usd", mode="before")
    @classmethod
    def _parse_cost(cls, v: Any) -> Decimal | None:
        if v is None:
            return None
        if isinstance(v, int | float):  # bool too
            raise ValueError("must be a decimal string such as \"0.0123\", not a JSON number "
                             "(a binary float cannot hold every amount exactly)")
        if not isinstance(v, str | Decimal):
            raise ValueError("must be a decimal string such as \"0.0123\"")
        try:
            d = Decimal(str(v))
        except InvalidOperation as e:
            raise ValueError("must be a decimal string such as \"0.0123\"") from e
        if not d.is_finite() or d < 0 or d > MAX_COST_PER_EVENT:
            raise ValueError(f"must be between 0 and {MAX_COST_PER_EVENT}")
        return d

    @model_validator(mode="after")
    def _cache_within_input(self) -> UsageEvent:
        if self.cached_input_tokens + self.cache_write_input_tokens > self.input_tokens:
            raise ValueError("cached_input_tokens + cache_write_input_tokens exceed input_tokens "
                             "(cache reads and writes are part of the input)")
        return self

    @field_serializer("ts")
    def _ser_ts(self, v: datetime) -> str:
        return v.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    @field_serializer("cost_usd", "saved_usd")
    def _ser_cost(self, v: Decimal | None) -> str | None:
        return None if v is None else str(v)

    def to_json(self) -> bytes:
        """The wire form: compact UTF-8 JSON, ``None`` fields left out (and no cache writes
        when there were none, so the common event is what it always was)."""
        data = self.model_dump(by_alias=True, exclude_none=True)
        if not self.cache_write_input_tokens:
            del data["cache_write_input_tokens"]
        return orjson.dumps(data)

    @property
    def key(self) -> bytes:
        """The Kafka message key: the user id, so one user's events stay in order."""
        return self.user_id.encode()


class Decoded(_Outcome, msgspec.Struct, frozen=True, gc=False):
    """A usage event as the worker and the ledger read it from Kafka: the fields of
    :class:`UsageEvent`, validated exactly as the model validates them, in a plain struct
    (building one costs a tenth of building the model: this is the worker's hot path).
    :meth:`to_model` gives the model."""

    event_id: str
    ts: datetime
    user_id: str
    feature: str
    model: str
    provider: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    status: str = "ok"
    finish_reason: str | None = None
    cost_usd: Decimal | None = None
    estimated: bool = False
    local_input_tokens: int | None = None
    cache_hit: bool | None = None
    saved_usd: Decimal | None = None

    def to_model(self) -> UsageEvent:
        """The same event as the validated model (without validating it again)."""
        event = _new_event(UsageEvent)
        _set(event, "__dict__", {"schema_": 1, **msgspec.structs.asdict(self)})
        _set(event, "__pydantic_fields_set__", _FIELDS)
        _set(event, "__pydantic_extra__", None)
        _set(event, "__pydantic_private__", None)
        return event

    @classmethod
    def of(cls, event: UsageEvent) -> Decoded:
        """The struct of a validated model."""
        fields = dict(event.__dict__)
        del fields["schema_"]
        return cls(**fields)


_new_event = UsageEvent.__new__
_set = object.__setattr__
_FIELDS = frozenset(UsageEvent.model_fields)


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
    Texts the screen cannot judge (escapes, a space before a colon) go to the exact check
    too; only a text that fails the screen pays for it. (A two-byte search costs as much as
    the count, a one-byte one almost nothing: the rare byte is looked for first.)"""
    return (raw.count(b'":') != keys or (b"\\" in raw and b"\\u" in raw)
            or (b" " in raw and b'" :' in raw))


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
    plain = b"\\" not in raw and b"\x7f" not in raw
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
    if not plain and _CONTROL.search(event_id + w.user_id + w.feature + w.model):
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
    if at.tzinfo is None or not _EARLIEST <= at < _LATEST:
        return None
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return Decoded(event_id, at, w.user_id, w.feature, w.model, w.provider, w.input_tokens,
                   w.output_tokens, w.cached_input_tokens, w.cache_write_input_tokens,
                   w.status, w.finish_reason, cost, w.estimated, w.local_input_tokens,
                   w.cache_hit, saved)


def _money(text: str) -> Decimal | None:
    try:
        d = Decimal(text)
    except InvalidOperation:
        return None
    if not d.is_finite() or d < 0 or d > MAX_COST_PER_EVENT:
        return None
    return d


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
