"""The alert state machine of one (scope, id, window): OK → WARN → CUTOFF → ALERT → ESCALATED.

Levels only rise inside a window (spend never goes down), so each rise is one
transition and one message; a new window starts again at OK. Pure: no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal


class Level(enum.IntEnum):
    """Alert levels of one (scope, id, window), in escalation order."""

    OK = 0
    WARN = 1
    CUTOFF = 2
    ALERT = 3
    ESCALATED = 4


@dataclass(frozen=True, slots=True)
class Ladder:
    """Ratios of spend to budget at which each level starts; ``None`` skips a level."""

    warn: Decimal | None = Decimal("0.8")
    cutoff: Decimal | None = Decimal("1.0")
    alert: Decimal | None = Decimal("1.2")
    escalate: Decimal | None = Decimal("2.0")

    def level_for(self, ratio: Decimal) -> Level:
        """The highest level whose threshold ``ratio`` has reached."""
        for level, threshold in (
            (Level.ESCALATED, self.escalate),
            (Level.ALERT, self.alert),
            (Level.CUTOFF, self.cutoff),
            (Level.WARN, self.warn),
        ):
            if threshold is not None and ratio >= threshold:
                return level
        return Level.OK


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of level; ``previous < current`` always."""

    previous: Level
    current: Level


def step(previous: Level, ratio: Decimal, ladder: Ladder) -> Transition | None:
    """Advance the machine: a :class:`Transition` when the level rose, else ``None``.

    A jump over several levels (one huge event) is one transition, so one message.
    Levels never fall inside a window: a late correction cannot re-arm an alert.
    """
    current = ladder.level_for(ratio)
    if current > previous:
        return Transition(previous, current)
    return None


def ratio_of(spent: Decimal, budget: Decimal) -> Decimal:
    """Spend over budget; a zero budget is exhausted by any spend."""
    if budget <= 0:
        return Decimal("Infinity") if spent > 0 else Decimal(0)
    return spent / budget
