"""What a grant does to a user's day: the raised limit, an unblock's amount, the level the
user's state machine falls back to. Pure: no I/O."""

from __future__ import annotations

from decimal import Decimal

from spendstream.domain.budgets import Limit
from spendstream.domain.ladder import Ladder, Level
from spendstream.domain.policy import measure
from spendstream.domain.totals import Totals


def raised(limit: Limit | None, usd: Decimal, tokens: int) -> Limit | None:
    """``limit`` plus what was granted, in the units it limits (a token grant on a
    USD-only tier changes nothing: tokens are not limited there). ``None``: no budget."""
    if limit is None or (not usd and not tokens):
        return limit
    return Limit(usd=None if limit.usd is None else limit.usd + usd,
                 tokens=None if limit.tokens is None else limit.tokens + tokens)


def unblock_amount(totals: Totals, tier: Limit | None, current: Limit | None
                   ) -> tuple[Decimal, int]:
    """An unblock's grant: for a user cut off now, what gives them their tier's whole daily
    budget left again (spent + the tier's budget - today's budget, in each unit the tier
    limits); for anyone else nothing, so a second unblock (a double click) grants nothing."""
    if tier is None or current is None or totals.level < Level.CUTOFF:
        return Decimal(0), 0
    usd = (max(totals.usd + tier.usd - current.usd, Decimal(0))
           if tier.usd is not None and current.usd is not None else Decimal(0))
    tokens = (max(totals.tokens + tier.tokens - current.tokens, 0)
              if tier.tokens is not None and current.tokens is not None else 0)
    return usd, tokens


def level_after(totals: Totals, limit: Limit | None, ladder: Ladder) -> Level:
    """The level of the user's state machine once the raised ``limit`` applies: never
    above the one it had (a grant only lowers it), so the next rise is announced again."""
    current = Level(totals.level)
    if limit is None:
        return Level.OK
    return min(current, ladder.level_for(measure(totals, limit).ratio))
