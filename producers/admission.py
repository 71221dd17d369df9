"""What a guard hands back: the :class:`Admission` of one call, the guard's counters,
and the port it sends usage events to."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from spendstream.contract.event import UsageEvent
from spendstream.producers.ratelimit import TokenSlot
from spendstream.producers.reservations import Reservation


@dataclass(slots=True)
class Admission:
    """What the guard allows for one call: the (maybe trimmed) messages, model and cap.

    Treat it as read-only (``dataclasses.replace`` makes a changed copy). It is not a
    frozen dataclass because one is built per call on the guard's hot path, and a frozen
    dataclass's ``__init__`` costs 3.5 µs of the cached check's 20 µs budget here."""

    user_id: str
    feature: str
    model: str
    max_tokens: int | None
    messages: list[dict[str, Any]]
    input_tokens_local: int
    """The local tiktoken count of ``messages`` (chat overhead included)."""
    input_exact: bool
    """False when the count is an approximation (encoding unavailable offline)."""
    trimmed: bool = False
    warning: dict[str, Any] | None = None
    """The user's or feature's warn flag value, if set: show a banner."""
    remaining_usd: Decimal | None = None
    """What is left of the user's daily USD budget (``None``: the tier has none)."""
    extra: dict[str, Any] = field(default_factory=dict)
    tier: str | None = None
    """The user's tier the model was chosen for."""
    remaining_tokens: int | None = None
    """What is left of the user's daily token budget (``None``: the tier has none)."""
    reservation: Reservation | None = None
    """The worst-case cost held for this call (``reservations:`` in the budgets file)."""
    cache_ttl: float | None = None
    """Seconds a complete answer may be cached (the feature's ``cache.ttl``); ``None``: off."""
    token_slot: TokenSlot | None = None
    """The call's tokens-per-minute entries, corrected to what it used by ``record``."""
    deferred: Reservation | None = None
    """The worst case not held yet (``admit(..., reserve=False)``): :meth:`Guard.reserve`
    holds it once the response cache has missed, so a cached answer holds nothing."""


class EventSink(Protocol):
    """Where ``record`` sends events: :class:`Emitter` or :class:`SyncEmitter`."""

    def emit(self, event: UsageEvent) -> bool:
        """Queue one event; never raises."""
        ...


@dataclass(slots=True)
class GuardStats:
    """Counters for dashboards and tests."""

    cache_hits: int = 0
    redis_reads: int = 0
    redis_errors: int = 0
    """Redis calls that failed (connection refused, timeout, ...)."""
    failed_open: int = 0
    """Admissions let through without a Redis answer (fail-open policy)."""
    outages: int = 0
    emitted: int = 0
    emit_rejected: int = 0
    """Events the emitter did not accept (its buffer was full)."""
    cache_answers: int = 0
    """Calls answered from the response cache."""
    length_finishes: Counter[str] = field(default_factory=Counter)
    """Per feature: answers cut by ``max_tokens`` (``finish_reason == "length"``)."""
