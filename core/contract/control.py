"""The control record: an operator's grant or unblock for one user, sent on the usage topic.

A grant must change what the worker counts against, not only the Redis flag (the worker
would write the cutoff again with the user's next event). So it travels in band: a JSON
object with a ``control`` field, keyed by the user id like the user's events, so it lands
on the user's partition and the worker applies it in order with them, exactly once
(deduplicated by ``grant_id``). The worker and the ledger recognise it with
:func:`control_of`; everything else on the topic is a usage event.

``spendstream grant`` and ``spendstream unblock`` build it with :func:`grant` and
:func:`unblock`, the dashboard's write actions too.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
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

from spendstream.contract.event import MAX_TOKENS_PER_EVENT, MalformedEvent, no_control_chars

MAX_GRANT_USD = Decimal("100000")
"""Above this a grant is a typo, not a support request."""
MAX_GRANT_PLACES = 6
"""A new grant's ``usd`` has at most this many decimal places (a millionth of a dollar)."""
MAX_GRANT_DAYS = 31
"""``until`` at most this many days after the grant's own day."""
MARKER = b'"control"'
"""Bytes every control record holds (its field name); a usage event without them is never
parsed twice."""

_ID = Annotated[StrictStr, Field(min_length=1, max_length=256),
                AfterValidator(no_control_chars)]


class Control(BaseModel):
    """One grant (``control: "grant"``) or unblock (``control: "unblock"``) of one user.

    A grant raises the user's daily budget by ``usd`` and/or ``tokens`` on every UTC day
    from the day of ``ts`` through ``until`` (default: that day only). An unblock clears a
    cutoff on the day of ``ts``: for a user cut off then, the worker grants what gives them
    their tier's whole daily budget back (nothing otherwise), so the amount is decided in
    order with their events.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal[1] = Field(default=1, alias="schema")
    control: Literal["grant", "unblock"]
    grant_id: _ID = Field(default_factory=lambda: uuid.uuid4().hex)
    user_id: _ID
    ts: datetime = Field(default_factory=lambda: datetime.now(UTC))
    usd: Decimal | None = None
    tokens: Annotated[StrictInt, Field(gt=0, le=MAX_TOKENS_PER_EVENT)] | None = None
    until: date | None = None
    reason: Annotated[StrictStr, Field(max_length=500)] = ""
    by: Annotated[StrictStr, Field(max_length=200)] = ""
    """Who asked (the CLI's ``--by``, or ``dashboard``)."""

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, v: Any) -> datetime:
        if isinstance(v, str):
            try:
                v = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError as e:
                raise ValueError("must be an RFC 3339 timestamp such as "
                                 "2026-11-23T10:00:00Z") from e
        if not isinstance(v, datetime) or v.tzinfo is None:
            raise ValueError("must be an RFC 3339 timestamp with a UTC offset")
        return v.astimezone(UTC)

    @field_validator("usd", mode="before")
    @classmethod
    def _parse_usd(cls, v: Any) -> Decimal | None:
        if v is None:
            return None
        if not isinstance(v, str | Decimal):
            raise ValueError('must be a decimal string such as "1.50", not a JSON number')
        try:
            d = Decimal(str(v))
        except InvalidOperation as e:
            raise ValueError('must be a decimal string such as "1.50"') from e
        if not d.is_finite() or d <= 0 or d > MAX_GRANT_USD:
            raise ValueError(f"must be more than 0 and at most {MAX_GRANT_USD}")
        return d

    @field_validator("until", mode="before")
    @classmethod
    def _parse_until(cls, v: Any) -> date | None:
        if v is None or isinstance(v, date):
            return v
        if not isinstance(v, str):
            raise ValueError("must be a UTC date such as 2026-11-30")
        try:
            return date.fromisoformat(v)
        except ValueError as e:
            raise ValueError("must be a UTC date such as 2026-11-30") from e

    @model_validator(mode="after")
    def _amounts(self) -> Control:
        if self.control == "grant" and self.usd is None and self.tokens is None:
            raise ValueError("a grant needs usd, tokens or both")
        if self.control == "unblock" and (self.usd is not None or self.tokens is not None
                                          or self.until is not None):
            raise ValueError("an unblock takes no usd, tokens or until: the worker works out "
                             "what gives a cut-off user their daily budget back")
        if self.until is not None:
            if self.until < self.day:
                raise ValueError(f"until ({self.until}) is before the grant's day ({self.day})")
            if self.until > self.day + timedelta(days=MAX_GRANT_DAYS):
                raise ValueError(f"until is more than {MAX_GRANT_DAYS} days ahead")
        return self

    @field_serializer("ts")
    def _ser_ts(self, v: datetime) -> str:
        return v.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    @field_serializer("usd")
    def _ser_usd(self, v: Decimal | None) -> str | None:
        return None if v is None else format(v, "f")  # plain: never 1.5E+3

    @property
    def day(self) -> date:
        """The UTC day the grant starts on (the day of ``ts``)."""
        return self.ts.date()

    @property
    def days(self) -> list[date]:
        """Every UTC day the grant raises the budget of."""
        last = self.until or self.day
        return [self.day + timedelta(days=i) for i in range((last - self.day).days + 1)]

    @property
    def key(self) -> bytes:
        """The Kafka message key: the user id, so the record is ordered with their events."""
        return self.user_id.encode()

    def to_json(self) -> bytes:
        """The wire form (``None`` fields left out)."""
        return orjson.dumps(self.model_dump(by_alias=True, exclude_none=True))


def grant(user_id: str, usd: Decimal | str | None = None, tokens: int | None = None,
          until: date | None = None, *, reason: str = "", by: str = "",
          grant_id: str | None = None, ts: datetime | None = None) -> Control:
    """A grant of ``usd`` and/or ``tokens`` to ``user_id``; ``ValueError`` naming what is
    wrong."""
    fields: dict[str, Any] = {"control": "grant", "user_id": user_id, "usd": _amount(usd),
                              "tokens": tokens, "until": until, "reason": reason, "by": by}
    return _build(fields, grant_id, ts)


def _amount(usd: Any) -> Any:
    """A new grant's ``usd`` in plain notation (``1.5E+3`` is ``1500``), refused with more
    than :data:`MAX_GRANT_PLACES` decimal places (``1e-12`` is a typo, not a grant).
    Anything that is not a finite decimal goes to the model unchanged, which says why.
    Records already sent are read as they are (:func:`control_of`)."""
    if not isinstance(usd, str | Decimal):
        return usd
    try:
        d = Decimal(usd)
    except InvalidOperation:
        return usd
    if not d.is_finite():
        return usd
    exponent = d.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_GRANT_PLACES:
        raise ValueError(f"usd: {usd} has more than {MAX_GRANT_PLACES} decimal places; give "
                         f"at most {MAX_GRANT_PLACES} (0.000001 is the smallest amount)")
    return Decimal(format(d, "f"))


def unblock(user_id: str, *, reason: str = "", by: str = "", grant_id: str | None = None,
            ts: datetime | None = None) -> Control:
    """An unblock of ``user_id``; ``ValueError`` naming what is wrong."""
    return _build({"control": "unblock", "user_id": user_id, "reason": reason, "by": by},
                  grant_id, ts)


def _build(fields: dict[str, Any], grant_id: str | None, ts: datetime | None) -> Control:
    if grant_id is not None:
        fields["grant_id"] = grant_id
    if ts is not None:
        fields["ts"] = ts
    try:
        return Control.model_validate(fields)
    except ValidationError as e:
        raise ValueError(_explain(e)) from None


def control_of(raw: bytes | None) -> Control | None:
    """The control record in ``raw``, or ``None`` when ``raw`` is not one (a usage event, or
    anything the event decoder should judge). Cheap for usage events: a substring test.

    Raises :class:`MalformedEvent` for an object with a ``control`` field that is not a
    valid control record (it goes to the DLQ with the reason).
    """
    if raw is None or MARKER not in raw or raw[:1] != b"{":
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or "control" not in data:
        return None
    try:
        return Control.model_validate(data)
    except ValidationError as e:
        raise MalformedEvent(f"control record: {_explain(e)}") from None


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
