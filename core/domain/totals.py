"""Running sums of one window.

Exactly-once counting does not live here: stage one skips events whose id its state
already holds (ids and sums are logged in one record, see ``state.py``), and stage two
receives absolute per-partition sums (:meth:`Totals.merge`), which it replaces rather
than adds, so a replay can never fold anything twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple


class Contribution(NamedTuple):
    """What one event adds to every window it falls in (a tuple: one is made per event)."""

    usd: Decimal
    tokens: int
    ok: bool
    priced: bool
    input_tokens: int = 0
    local_input_tokens: int | None = None
    """The app's own count of the prompt, when it sent one (token-inflation audit)."""
    truncated: bool = False
    """The answer stopped at its output cap (``finish_reason`` ``length``)."""
    cache_hit: bool = False
    """Answered from the response cache (free; counted for the feature's hit rate)."""


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
    audited: int = 0
    reported_input: int = 0
    local_input: int = 0
    truncated: int = 0
    cache_hits: int = 0

    def add(self, c: Contribution, audit: bool = False) -> None:
        """Fold one event in.

        With ``audit`` the provider's and the app's input counts are summed as well (only
        the token-inflation windows ask for it, so other state stays small).
        """
        self.events += 1
        self.tokens += c.tokens
        self.usd += c.usd
        if not c.ok:
            self.failed += 1
        if not c.priced:
            self.unpriced += 1
        if c.truncated:
            self.truncated += 1
        if c.cache_hit:
            self.cache_hits += 1
        if audit and c.local_input_tokens is not None:
            self.audited += 1
            self.reported_input += c.input_tokens
            self.local_input += c.local_input_tokens

    def merge(self, other: Totals, audit: bool = True) -> None:
        """Add another window's sums (one source partition's part of this window, or a
        batch's sums of one minute); ``audit=False`` leaves the audit counts out."""
        self.events += other.events
        self.tokens += other.tokens
        self.usd += other.usd
        self.failed += other.failed
        self.unpriced += other.unpriced
        self.truncated += other.truncated
        self.cache_hits += other.cache_hits
        if not audit:
            return
        self.audited += other.audited
        self.reported_input += other.reported_input
        self.local_input += other.local_input

    def sums(self) -> dict[str, Any]:
        """Only the sums (no decision state): what stage one forwards to stage two."""
        d: dict[str, Any] = {"usd": str(self.usd), "tok": self.tokens, "n": self.events}
        for name, value in (("err", self.failed), ("unp", self.unpriced),
                            ("len", self.truncated), ("hit", self.cache_hits),
                            ("au", self.audited),
                            ("ri", self.reported_input), ("li", self.local_input)):
            if value:
                d[name] = value
        return d

    def to_json(self) -> dict[str, Any]:
        """The changelog form: small and JSON-safe (money as a string)."""
        d = self.sums()
        if self.level:
            d["lvl"] = self.level
        if self.pace:
            d["pace"] = self.pace
        d["end"] = self.end
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Totals:
        """Inverse of :meth:`to_json`; ``None`` is an empty window."""
        if not d:
            return cls()
        return cls(usd=Decimal(d["usd"]), tokens=d["tok"], events=d["n"],
                   failed=d.get("err", 0), unpriced=d.get("unp", 0), level=d.get("lvl", 0),
                   pace=d.get("pace", 0), end=d.get("end", 0), audited=d.get("au", 0),
                   reported_input=d.get("ri", 0), local_input=d.get("li", 0),
                   truncated=d.get("len", 0), cache_hits=d.get("hit", 0))
