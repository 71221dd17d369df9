"""The top-users tables' daily budget and what is left: the worker's live spend key, which
carries any grant, wins over the tier's limit."""

from __future__ import annotations

from decimal import Decimal

import pytest

from spendstream.dashboard.budget_view import user_today
from spendstream.domain.budgets import Limit

FREE = Limit(usd=Decimal("0.10"))
TOKENS = Limit(tokens=50_000)

# Live values as the worker's user stage writes them (streams/user_stage.py _publish_spend);
# the API gives money without trailing zeros, as everywhere else.
GRANTED = {"scope": "user", "id": "acct-g", "tier": "free", "spent_usd": "0.12",
           "spent_tokens": 900, "budget_usd": "0.20", "budget_tokens": None,
           "remaining_usd": "0.08", "granted_usd": "0.10", "granted_tokens": 0}
UNGRANTED_OVER = {"spent_usd": "0.15", "budget_usd": "0.10", "budget_tokens": None,
                  "remaining_usd": "0"}
TOKEN_GRANT = {"spent_usd": "0.01", "spent_tokens": 60_000, "budget_usd": None,
               "budget_tokens": 70_000, "remaining_tokens": 10_000}
NO_LIMIT = {"spent_usd": "0.30", "spent_tokens": 10}


@pytest.mark.parametrize("limit,live,expected", [
    # A grant of $0.10 on the $0.10 tier: the raised budget and its remainder, not the tier's.
    (FREE, GRANTED, {"daily_budget_usd": "0.2", "left_today_usd": "0.08",
                     "tier_budget_usd": "0.1", "today_live_usd": "0.12",
                     "granted_usd": "0.1"}),
    (FREE, UNGRANTED_OVER, {"daily_budget_usd": "0.1", "left_today_usd": "0",
                            "granted_usd": None}),
    # Nothing spent today: no live key, the whole tier limit is left.
    (FREE, {}, {"daily_budget_usd": "0.1", "left_today_usd": "0.1",
                "today_live_usd": None}),
    (TOKENS, TOKEN_GRANT, {"daily_budget_usd": None, "daily_budget_tokens": 70_000,
                           "left_today_tokens": 10_000, "left_today_usd": None}),
    (TOKENS, {}, {"daily_budget_tokens": 50_000, "left_today_tokens": 50_000}),
    # A tier without a limit: nothing to show, with or without spend.
    (None, NO_LIMIT, {"daily_budget_usd": None, "left_today_usd": None,
                      "tier_budget_usd": None, "today_live_usd": "0.3"}),
    (None, {}, {"daily_budget_usd": None, "left_today_usd": None}),
])
def test_live_budget_wins_over_the_tier(limit, live, expected):
    row = user_today(limit, live)
    assert {k: row[k] for k in expected} == expected


def test_text_that_is_not_money_is_shown_as_it_is():
    assert user_today(FREE, {"budget_usd": "n/a"})["daily_budget_usd"] == "n/a"
