"""Budget evaluation: how far a window's totals are into their limit, and which ladder applies.

Pure functions over values; the stages turn the results into flags and alerts.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from spendstream.domain.budgets import Limit, Thresholds
from spendstream.domain.ladder import Ladder, ratio_of
from spendstream.domain.totals import Totals


@dataclass(frozen=True, slots=True)
class Measure:
    """The binding dimension of a limit: the one (usd or tokens) furthest spent."""

    ratio: Decimal
    unit: str
    spent: Decimal
    budget: Decimal


def measure(totals: Totals, limit: Limit) -> Measure:
    """Compare totals with a limit in USD and/or tokens; the larger ratio binds."""
    candidates = []
    if limit.usd is not None:
        candidates.append(Measure(ratio_of(totals.usd, limit.usd), "usd", totals.usd, limit.usd))
    if limit.tokens is not None:
        budget = Decimal(limit.tokens)
        spent = Decimal(totals.tokens)
        candidates.append(Measure(ratio_of(spent, budget), "tokens", spent, budget))
    return max(candidates, key=lambda m: m.ratio)


def user_ladder(t: Thresholds) -> Ladder:
    """Users: a warn flag, then a cutoff flag; nothing above (the user is already cut off)."""
    return Ladder(warn=t.warn, cutoff=t.cutoff, alert=None, escalate=None)


def feature_ladder(t: Thresholds, hard_cap: bool = True) -> Ladder:
    """Features: warn, cutoff (only for a feature with ``cutoff: true``: nothing is cut off
    otherwise, so nothing is announced as such), the 120% alert, then 2x."""
    return Ladder(warn=t.warn, cutoff=t.cutoff if hard_cap else None, alert=t.alert,
                  escalate=t.alert * 2 - t.cutoff)


def cap_ladder() -> Ladder:
    """Global caps and spike alerts: one level, reached at 100% of the cap."""
    return Ladder(warn=None, cutoff=Decimal(1), alert=None, escalate=None)


def pace_exceeded(spent: Decimal, budget: Decimal, elapsed: Decimal, pace: Decimal,
                  min_fraction: Decimal = Decimal("0.1")) -> bool:
    """Month-to-date spend running ahead of the pro-rated budget by ``pace`` (e.g. 1.2x).

    Ignored until spend reaches ``min_fraction`` of the budget, so the first hours of a
    month (tiny elapsed fraction) cannot raise a pace warning on pennies.
    """
    if budget <= 0 or spent < budget * min_fraction:
        return False
    return spent > budget * elapsed * pace
