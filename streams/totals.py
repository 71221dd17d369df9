"""Running sums of one window, folded idempotently by source offset.

Each aggregate remembers, per source partition, the offset of the last event folded
into it. Replaying a partition after a crash (at-least-once delivery, no broker
transactions) therefore never folds an event twice: the value and its offsets are
one changelog record, so they are restored together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one event adds to every window it falls in."""

    usd: Decimal
    tokens: int
    ok: bool
    priced: bool
    input_tokens: int = 0
    local_input_tokens: int | None = None
    """The app's own count of the prompt, when it sent one (token-inflation audit)."""
    truncated: bool = False
    """The answer stopped at its output cap (``finish_reason`` ``length``)."""


@dataclass(slots=True)
class Totals:
    """Sums of one (scope, id, window); state holds these, never the events."""

    usd: Decimal = Decimal(0)
    tokens: int = 0
    events: int = 0
    failed: int = 0
    unpriced: int = 0
    level: int = 0
    pace: int = 0
    end: int = 0
    partition: int = -1
    offsets: dict[str, int] = field(default_factory=dict)
    audited: int = 0
    reported_input: int = 0
    local_input: int = 0
    truncated: int = 0

    def seen(self, source: int, offset: int) -> bool:
        """True when the event at ``offset`` of partition ``source`` is already folded in."""
        return offset <= self.offsets.get(str(source), -1)

    def add(self, source: int, offset: int, c: Contribution, audit: bool = False) -> bool:
        """Fold one event in; returns False (and changes nothing) if it was folded before.

        With ``audit`` the provider's and the app's input counts are summed as well (only
        the token-inflation windows ask for it, so other state stays small).
        """
        if self.seen(source, offset):
            return False
        self.offsets[str(source)] = offset
        self.events += 1
        self.tokens += c.tokens
        self.usd += c.usd
        if not c.ok:
            self.failed += 1
        if not c.priced:
            self.unpriced += 1
        if c.truncated:
            self.truncated += 1
        if audit and c.local_input_tokens is not None:
            self.audited += 1
            self.reported_input += c.input_tokens
            self.local_input += c.local_input_tokens
        return True

    def to_json(self) -> dict[str, Any]:
        """The changelog form: small and JSON-safe (money as a string)."""
        d = {"usd": str(self.usd), "tok": self.tokens, "n": self.events, "err": self.failed,
             "unp": self.unpriced, "lvl": self.level, "pace": self.pace, "end": self.end,
             "p": self.partition, "off": self.offsets}
        if self.truncated:
            d["len"] = self.truncated
        if self.audited:  # only the audit windows carry these; keep the rest small
            d["au"], d["ri"], d["li"] = self.audited, self.reported_input, self.local_input
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Totals:
        """Inverse of :meth:`to_json`; ``None`` is an empty window."""
        if not d:
            return cls()
        return cls(usd=Decimal(d["usd"]), tokens=d["tok"], events=d["n"], failed=d["err"],
                   unpriced=d["unp"], level=d["lvl"], pace=d.get("pace", 0), end=d["end"],
                   partition=d["p"], offsets=dict(d["off"]), audited=d.get("au", 0),
                   reported_input=d.get("ri", 0), local_input=d.get("li", 0),
                   truncated=d.get("len", 0))
