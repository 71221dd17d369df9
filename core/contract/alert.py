"""The alert payload: what crossed what, in which window, as published on the alert topic
(message key :attr:`Alert.key`, value :meth:`Alert.encode`). Knows nothing of faust or
Slack."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from spendstream.domain.ladder import Level

__all__ = ["Alert", "Level"]


@dataclass(frozen=True, slots=True)
class Alert:
    """One state transition worth telling a human about.

    ``scope`` is ``user``, ``feature``, ``global`` or ``model``; ``subject`` is the user id,
    feature name, ``hourly``/``daily``/``tpm`` or the model name. ``kind`` names the rule
    (``budget``, ``pace``, ``spike``, ``unpriced``...). ``unit`` is ``usd`` or ``tokens``.
    """

    scope: str
    subject: str
    kind: str
    level: Level
    previous: Level
    spent: Decimal
    budget: Decimal
    unit: str
    window_start: datetime
    window_end: datetime
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    detail: str = ""

    @property
    def percent(self) -> Decimal:
        """Spent as a percentage of the budget (0 when the budget is 0)."""
        if not self.budget:
            return Decimal(0)
        return (self.spent / self.budget * 100).quantize(Decimal("0.1"))

    @property
    def key(self) -> str:
        """Identity of the state machine this alert came from: one message per transition."""
        return f"{self.scope}:{self.subject}:{self.kind}:{self.window_start.isoformat()}"

    @property
    def transition(self) -> str:
        """Identity of this one message: its state machine and the level it announces."""
        return f"{self.key}:{self.level.name.lower()}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        """Inverse of :meth:`to_dict` (``percent`` is derived, so ignored)."""
        def when(text: str) -> datetime:
            return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)

        return cls(scope=d["scope"], subject=d["subject"], kind=d["kind"],
                   level=Level[d["level"].upper()], previous=Level[d["previous"].upper()],
                   spent=Decimal(d["spent"]), budget=Decimal(d["budget"]), unit=d["unit"],
                   window_start=when(d["window_start"]), window_end=when(d["window_end"]),
                   at=when(d["at"]), detail=d.get("detail", ""))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as published on the alert topic."""
        d = asdict(self)
        d["level"] = self.level.name.lower()
        d["previous"] = self.previous.name.lower()
        d["spent"] = str(self.spent)
        d["budget"] = str(self.budget)
        d["percent"] = str(self.percent)
        for k in ("window_start", "window_end", "at"):
            d[k] = d[k].strftime("%Y-%m-%dT%H:%M:%SZ")
        return d

    def encode(self) -> bytes:
        """The alert topic's message value: :meth:`to_dict` as JSON."""
        return orjson.dumps(self.to_dict())
