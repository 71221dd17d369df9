"""The ledger row: the one owner of how a counted event is stored in ``spend_ledger``
(the table itself is ``spendstream.ledger.schema``; the writer copies these rows in).

A row is built from a decoded :class:`UsageEvent`, the worker's :class:`Pricer` and the
user's tier. Its cost follows the worker's rules exactly: a failed call costs 0, the
event's own ``cost_usd`` wins, then the budgets file's ``prices:``, then the price table;
an unknown model is stored with a NULL cost and ``price_source = 'unpriced'``, never a
silent 0.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import NamedTuple

from spendstream.contract.control import Control
from spendstream.contract.event import Decoded, UsageEvent
from spendstream.domain.pricing import Pricer

COLUMNS = ("event_id", "ts", "date", "user_id", "feature", "model", "provider",
           "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_input_tokens",
           "status", "finish_reason", "tier", "estimated", "cache_hit", "cost_usd",
           "price_source", "saved_usd")
"""The columns of ``spend_ledger`` in the order a :class:`LedgerRow` holds them."""
TYPES = ("text", "timestamptz", "date", "text", "text", "text", "text", "int8", "int8", "int8",
         "int8", "text", "text", "text", "bool", "bool", "numeric", "text", "numeric")
"""PostgreSQL types of :data:`COLUMNS`, for the writer's binary COPY."""


class LedgerRow(NamedTuple):
    """One counted event as ``spend_ledger`` stores it (field order = :data:`COLUMNS`)."""

    event_id: str
    ts: datetime
    date: date
    user_id: str
    feature: str
    model: str
    provider: str | None
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_input_tokens: int
    status: str
    finish_reason: str | None
    tier: str | None
    estimated: bool
    cache_hit: bool
    cost_usd: Decimal | None
    price_source: str
    saved_usd: Decimal | None
    """For a response-cache hit: what the answer it reused cost (the event's ``saved_usd``,
    which the guard prices from the cached call's usage); NULL otherwise or when unknown."""


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; ids are checked at decode, these free-text fields
    # are not, and one NUL must not make a batch fail forever.
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def ledger_row(event: UsageEvent | Decoded, pricer: Pricer, tier: str | None = None) -> LedgerRow:
    """The row of one counted event: priced as the worker prices it, ``tier`` the user's
    tier in the budgets file at the time it was written."""
    priced = pricer.price_event(event)
    ts = event.ts
    if ts.tzinfo is not UTC:  # the decoders give UTC already; a hand-built event may not
        ts = ts.astimezone(UTC)
    provider, status, finish = event.provider, event.status, event.finish_reason
    return LedgerRow(
        event.event_id, ts, ts.date(), event.user_id, event.feature, event.model,
        _text(provider) if provider else provider, event.input_tokens, event.output_tokens,
        event.cached_input_tokens, event.cache_write_input_tokens,
        _text(status) or "ok", _text(finish) if finish else finish, tier,
        bool(event.estimated), bool(event.cache_hit),
        priced.cost if priced.priced else None, priced.source,
        event.saved_usd if event.cache_hit else None)


_Day = date  # ``until``'s type: inside GrantRow, ``date`` names the field

GRANT_COLUMNS = ("grant_id", "kind", "ts", "date", "until", "user_id", "usd", "tokens",
                 "reason", "granted_by")
"""The columns of the ``grants`` table in the order a :class:`GrantRow` holds them."""


class GrantRow(NamedTuple):
    """One grant or unblock as ``grants`` stores it (field order = :data:`GRANT_COLUMNS`).

    ``usd`` and ``tokens`` are what was asked; an unblock's are NULL (the worker grants what
    the user had spent that day, shown in its ``grant`` alert)."""

    grant_id: str
    kind: str
    ts: datetime
    date: date
    until: _Day
    user_id: str
    usd: Decimal | None
    tokens: int | None
    reason: str
    granted_by: str


def grant_row(control: Control) -> GrantRow:
    """The ledger row of a control record."""
    return GrantRow(control.grant_id, control.control, control.ts, control.day,
                    control.days[-1], control.user_id, control.usd, control.tokens,
                    control.reason, control.by)
