"""The usage event: one frozen, validated model, versioned by its ``schema`` field, and
the plain struct the worker reads it into.

Producers build the model and encode it; :mod:`spendstream.contract.decode` turns raw
bytes into the struct (or the model), and anything that does not decode raises
:class:`MalformedEvent` with a reason fit for the dead-letter topic.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
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
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)
"""Timestamps outside ``[EARLIEST, LATEST)`` are absurd, whatever form they come in."""

MAX_COST_DECIMALS = 18
"""Decimal places an amount may have: sums of them stay exact (28 significant digits in
Python's default context hold $10 billion to the 18th place) and PostgreSQL stores them."""
_MONEY_TEXT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_QUANTUM = Decimal(1).scaleb(-MAX_COST_DECIMALS)


def money(text: str) -> Decimal | str:
    """The amount a money string holds, or why it holds none (for the DLQ reason).

    ASCII digits with an optional point and exponent only (``Decimal`` alone would also
    take ``"1_0"`` as 10, spaces, other scripts' digits, signs, ``NaN``), from 0 to
    :data:`MAX_COST_PER_EVENT`, with at most :data:`MAX_COST_DECIMALS` places once
    trailing zeros are dropped."""
    digits_only = text.replace(".", "", 1)  # "0.0123" checked without the regex
    if not (digits_only.isascii() and digits_only.isdigit()) and not _MONEY_TEXT.fullmatch(
            text):
        return 'must be a decimal string such as "0.0123"'
    d = Decimal(text)
    if d > MAX_COST_PER_EVENT:
        return f"must be between 0 and {MAX_COST_PER_EVENT}"
    point = text.find(".")
    if (point < 0 or len(text) - point - 1 <= MAX_COST_DECIMALS) and not (
            "e" in text or "E" in text):
        return d  # the everyday form, "0.0123": no need to look at its digits
    if not d:
        return Decimal(0)  # whatever exponent it was written with
    _, digits, exponent = d.as_tuple()
    if isinstance(exponent, int) and exponent < -MAX_COST_DECIMALS:
        zeros = len(digits) - len(bytes(digits).rstrip(b"\0"))
        if exponent + zeros < -MAX_COST_DECIMALS:
            return f"more than {MAX_COST_DECIMALS} decimal places"
        d = d.quantize(_QUANTUM)  # only trailing zeros go
    return d


_ID = Annotated[StrictStr, Field(min_length=1, max_length=256)]
_TOKENS = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS_PER_EVENT)]


class MalformedEvent(SpendstreamError):
    """Raw bytes that are not a valid usage event; ``reason`` says why."""

    def __init__(self, reason: str, element: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.element = element
        """The element's JSON when it came from a packed record, else ``None``."""


CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""What no id may hold: a control character (C0, DEL or C1, such as the terminal escape
U+009B) would forge log lines, key separators or a terminal's display."""


def no_control_chars(value: str) -> str:
    """``value``, or :class:`ValueError` when it holds a :data:`CONTROL_CHARS` character
    (a pydantic validator: every id of the contracts goes through it)."""
    if CONTROL_CHARS.search(value):
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
        return no_control_chars(v)

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, v: Any) -> datetime:
        if isinstance(v, bool):
            raise ValueError("must be an RFC 3339 string or epoch seconds")
        if isinstance(v, int | float):
            if not 0 <= v < LATEST.timestamp():
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
        if not EARLIEST <= parsed < LATEST:
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
        if isinstance(v, Decimal):
            if not v.is_finite() or v < 0:
                raise ValueError(f"must be between 0 and {MAX_COST_PER_EVENT}")
            v = str(v)
        if not isinstance(v, str):
            raise ValueError("must be a decimal string such as \"0.0123\"")
        d = money(v)
        if isinstance(d, str):
            raise ValueError(d)
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
