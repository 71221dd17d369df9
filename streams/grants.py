"""Applying a grant or unblock (:mod:`spendstream.contract.control`) in stage one.

The record arrives on the user's partition, in order with their events. What it granted
is kept in the stage's changelogged state under ``g|{user}|{day}``, beside the user's day
window ``u|{user}|{day}`` and in the same changelog record as the batch, so a restart or
a rebalance carries it; its ``grant_id`` is kept there too, so a redelivered or repeated
record is applied once. The key ends with its day like a user window, so the sweep drops
it with the day.

Applying it lowers the user's state machine to the level their spend has under the
raised budget (clearing the cutoff flag when they are under it now), marks their window
for judging, so the batch's end publishes the raised budget and what is left on
``spend:user:{id}``, and raises one alert of kind ``grant``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from spendstream.contract import keys
from spendstream.contract.alert import Alert, Level
from spendstream.contract.control import Control
from spendstream.domain.grants import level_after, raised, unblock_amount
from spendstream.domain.policy import measure, user_ladder
from spendstream.domain.windows import late_cutoff, window_of
from spendstream.streams.stages import StateStore, flag_payload

if TYPE_CHECKING:
    from spendstream.streams.user_stage import UserStage

log = logging.getLogger("spendstream.worker")

GRANT = "g|"
"""Prefix of the state keys holding a user's grants of one day."""


def grant_key(user: str, day_key: str) -> str:
    """The state key of what ``user`` was granted on the day ``day_key``."""
    return f"{GRANT}{user}|{day_key}"


def granted(state: StateStore, partition: int, user: str, day_key: str
            ) -> tuple[Decimal, int] | None:
    """What the user was granted for the day ``day_key`` (USD, tokens); ``None``: nothing."""
    held = state.get(partition, grant_key(user, day_key))
    return None if held is None else (Decimal(held["usd"]), int(held["tok"]))


def apply_control(stage: UserStage, partition: int, control: Control, now: datetime) -> bool:
    """Apply one grant or unblock; ``False`` when it was applied before (same
    ``grant_id``) or its day is over (nothing left to raise)."""
    user = control.user_id
    day = window_of("day", control.ts)
    if day.ended_before(late_cutoff(now, stage.grace)):
        stage.counters.late += 1
        log.warning("ignored %s %s of user %r: its day %s is over", control.control,
                    control.grant_id, user, day.key)
        return False
    first = grant_key(user, day.key)
    held: dict[str, Any] = stage.state.get(partition, first) or {"usd": "0", "tok": 0}
    if control.grant_id in held.get("ids", ()):
        stage.counters.duplicates += 1
        return False
    users = stage.budgets.users
    tier = users.tier_of(user)
    base = users.tiers.get(tier)
    totals = stage._load(partition, f"u|{user}|{day.key}", day)  # judged at the batch's end
    before = raised(base, Decimal(held["usd"]), held["tok"])
    if control.control == "unblock":
        usd, tokens = unblock_amount(totals, base, before)
        if not usd and not tokens:  # not cut off (or unblocked already): nothing to clear
            log.info("unblock %s of user %r: not cut off, nothing to do", control.grant_id,
                     user)
            return False
    else:
        usd, tokens = control.usd or Decimal(0), control.tokens or 0
    for d in control.days:
        key = grant_key(user, window_of("day", datetime.combine(d, time(), UTC)).key)
        value = held if key == first else stage.state.get(partition, key) or {
            "usd": "0", "tok": 0}
        value = {**value, "usd": str(Decimal(value["usd"]) + usd), "tok": value["tok"] + tokens}
        if key == first:
            value["ids"] = [*held.get("ids", ()), control.grant_id]
        stage.state.put(partition, key, value)
    after = raised(base, Decimal(held["usd"]) + usd, held["tok"] + tokens)
    previous = Level(totals.level)
    level = level_after(totals, after, user_ladder(stage.budgets.thresholds))
    if level < previous:
        totals.level = level
        if previous >= Level.CUTOFF:
            stage.flags.delete(keys.cutoff_user(user))
        if level == Level.OK:
            stage.flags.delete(keys.warn_user(user))
    spent, budget, unit = Decimal(totals.usd), Decimal(0), "usd"
    if after is not None:
        m = measure(totals, after)
        spent, budget, unit = m.spent, m.budget, m.unit
        if level == Level.WARN and previous > level:
            reason = f"daily {m.unit} budget of tier {tier} (raised by a grant)"
            stage.flags.set(keys.warn_user(user),
                            flag_payload("user", user, reason, level, m.spent, m.budget,
                                         m.unit, day), day.end_epoch)
    what = (f"${usd:f}" if usd else "") + (" and " if usd and tokens else "") + (
        f"{tokens} tokens" if tokens else "")
    detail = (f"{control.control} {control.grant_id}: +{what or 'nothing'} on "
              f"{len(control.days)} day(s) through {control.days[-1]}"
              + (f" by {control.by}" if control.by else "")
              + (f" ({control.reason})" if control.reason else ""))
    stage.counters.grants += 1
    stage._alert(Alert("user", user, "grant", level, previous, spent, budget, unit, day.start,
                       day.end, now, detail))
    log.info("applied %s", detail)
    return True
