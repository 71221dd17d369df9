"""Running sums of one window.

Exactly-once counting does not live here: stage one skips events whose id its state
already holds (ids and sums are logged in one record, see ``state.py``), and stage two
receives absolute per-partition sums (:meth:`Totals.merge`), which it replaces rather
than adds, so a replay can never fold anything twice.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec


class Contribution(msgspec.Struct, frozen=True, gc=False):
    """What one event adds to every window it falls in (a struct: one is made per event,
    in a tenth of the time a named tuple takes)."""

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


class Totals(msgspec.Struct, omit_defaults=True, gc=False):
    """Sums of one (scope, id, window); state holds these, never the events.

    The changelog form is compact JSON with short names (``usd`` as a decimal string,
    ``tok``, ``n``, ...), a sum left out when it is 0, encoded and decoded in C
    (:meth:`encode`, :meth:`decode`): the worker does both once per touched window per
    batch."""

    usd: Decimal = Decimal(0)
    tokens: int = msgspec.field(default=0, name="tok")
    events: int = msgspec.field(default=0, name="n")
    failed: int = msgspec.field(default=0, name="err")
    unpriced: int = msgspec.field(default=0, name="unp")
    level: int = msgspec.field(default=0, name="lvl")
    pace: int = 0
    end: int = 0
    """When the window ends (epoch seconds); 0 where the key says it (per-user windows)."""
    audited: int = msgspec.field(default=0, name="au")
    reported_input: int = msgspec.field(default=0, name="ri")
    local_input: int = msgspec.field(default=0, name="li")
    truncated: int = msgspec.field(default=0, name="len")
    cache_hits: int = msgspec.field(default=0, name="hit")

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
        """The changelog form as a dict: small and JSON-safe (money as a string)."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    def encode(self) -> bytes:
        """The changelog form as compact JSON."""
        return _encode(self)

    @classmethod
    def decode(cls, raw: bytes | None) -> Totals:
        """Inverse of :meth:`encode`; ``None`` is an empty window."""
        return cls() if raw is None else _decode(raw)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Totals:
        """Inverse of :meth:`to_json` (other keys are ignored); ``None`` is an empty
        window."""
        return cls() if not d else msgspec.convert(d, cls)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Totals).decode
