"""Budgets as the dashboard shows them: a feature's spend of its period against its budget,
the warn / cutoff / alert lines in dollars and the pace; a user's budget of today and what
is left. Pure: no I/O."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from spendstream.dashboard.periods import elapsed_fraction, money, period_bounds
from spendstream.domain.budgets import Budgets, Limit

PACE_BAND = Decimal("0.10")
"""Spend within 10% of the pro-rated budget is "on track"; above is "over", below "under"."""


def pace_status(spent: Decimal, prorated: Decimal) -> str:
    """``over``, ``on track`` or ``under`` the pro-rated budget (``on track`` at 0 of 0)."""
    if prorated <= 0:
        return "over" if spent > 0 else "on track"
    ratio = spent / prorated
    if ratio > 1 + PACE_BAND:
        return "over"
    if ratio < 1 - PACE_BAND:
        return "under"
    return "on track"


def pace(spent: Decimal, budget: Decimal, start: datetime, end: datetime, now: datetime
         ) -> dict[str, Any]:
    """Pro-rated budget at ``now``, spend as a multiple of it, the period's projected end
    spend at this rate, and the status."""
    gone = elapsed_fraction(start, end, now)
    prorated = (budget * gone).quantize(Decimal("0.000001"))
    projected = (spent / gone).quantize(Decimal("0.000001")) if gone > 0 else None
    ratio = (spent / prorated).quantize(Decimal("0.01")) if prorated > 0 else None
    return {"elapsed_fraction": money(gone), "prorated_usd": money(prorated),
            "pace": money(ratio), "projected_usd": money(projected),
            "status": pace_status(spent, prorated)}


def _amount(value: Any) -> str | None:
    """A live key's decimal text in the API's money form (``0.20`` -> ``0.2``); text that is
    not a number is shown as it is rather than hidden."""
    if value is None:
        return None
    try:
        return money(Decimal(str(value)))
    except InvalidOperation:
        return str(value)


def user_today(tier_limit: Limit | None, live: dict[str, Any]) -> dict[str, Any]:
    """A user's daily budget and what is left of it today, in USD and tokens.

    The worker's live ``spend:user:{id}`` value wins when the user has one: its budget is
    the tier's raised by any grant or unblock, and it is what the guard admits against. A
    user without one has spent nothing today, so all of the tier's limit is left.
    ``tier_budget_usd`` stays the tier's and ``granted_*`` say what grants added today.
    """
    tier_usd = None if tier_limit is None else tier_limit.usd
    tier_tokens = None if tier_limit is None else tier_limit.tokens
    row: dict[str, Any] = {"tier_budget_usd": money(tier_usd),
                           "today_live_usd": _amount(live.get("spent_usd")),
                           "granted_usd": _amount(live.get("granted_usd")),
                           "granted_tokens": live.get("granted_tokens")}
    if live:
        # The worker writes the budget keys only when the tier has a limit.
        row.update(daily_budget_usd=_amount(live.get("budget_usd")),
                   daily_budget_tokens=live.get("budget_tokens"),
                   left_today_usd=_amount(live.get("remaining_usd")),
                   left_today_tokens=live.get("remaining_tokens"))
    else:
        row.update(daily_budget_usd=money(tier_usd), daily_budget_tokens=tier_tokens,
                   left_today_usd=money(tier_usd), left_today_tokens=tier_tokens)
    return row


def feature_rows(budgets: Budgets, period_spend: dict[str, Decimal],
                 today: dict[str, Decimal], month: dict[str, Decimal],
                 flags: list[dict[str, Any]], now: datetime,
                 cache: dict[str, tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    """One row per feature of the budgets file, then per other feature with spend this
    month; ``period_spend`` is each budgeted feature's spend of its own current period;
    ``cache`` each feature's (calls, response-cache hits) this month."""
    cache = cache or {}
    t = budgets.thresholds
    by_feature = {(f["kind"], f["id"]): f for f in flags if f["scope"] == "feature"}
    rows = []
    names = list(budgets.features) + sorted(set(month) - set(budgets.features))
    for name in names:
        conf = budgets.features.get(name)
        row: dict[str, Any] = {"feature": name, "today_usd": money(today.get(name, Decimal(0))),
                               "month_usd": money(month.get(name, Decimal(0)))}
        calls, hits = cache.get(name, (0, 0))
        row.update(cache_on=conf is not None and conf.cache is not None, month_calls=calls,
                   month_cache_hits=hits,
                   month_cache_hit_rate=money((Decimal(hits) / calls).quantize(
                       Decimal("0.0001"))) if calls else None)
        cutoff, warn = by_feature.get(("cutoff", name)), by_feature.get(("warn", name))
        if cutoff is not None:
            row["state"] = "disabled" if cutoff.get("unit") == "switch" else "cut off"
            row["state_reason"], row["state_reset_at"] = cutoff["reason"], cutoff["reset_at"]
        elif warn is not None:
            row["state"] = "warned"
            row["state_reason"], row["state_reset_at"] = warn["reason"], warn["reset_at"]
        else:
            row["state"], row["state_reason"], row["state_reset_at"] = "ok", None, None
        if conf is None or conf.usd is None:
            row.update(period=conf.period if conf else None, budget_usd=None, spent_usd=None)
            rows.append(row)
            continue
        start, end = period_bounds(conf.period, now)
        spent = period_spend.get(name, Decimal(0))
        budget = conf.usd
        row.update(
            period=conf.period, period_start=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            period_end=end.strftime("%Y-%m-%dT%H:%M:%SZ"), budget_usd=money(budget),
            spent_usd=money(spent),
            percent=money((spent / budget * 100).quantize(Decimal("0.1")) if budget else None),
            lines={"warn": money(budget * t.warn), "cutoff": money(budget * t.cutoff),
                   "alert": money(budget * t.alert)},
            hard_cutoff=conf.cutoff, **pace(spent, budget, start, end, now))
        rows.append(row)
    return rows
