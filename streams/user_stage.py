"""Stage one: dedup, pricing, per-user day windows and per-partition partial sums."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec

from spendstream.contract import keys
from spendstream.contract.alert import Alert, Level
from spendstream.contract.event import Decoded
from spendstream.contract.rollup import (
    GLOBAL,
    LATE,
    message_key,
    split_key,
    window_key,
    window_of_key,
)
from spendstream.domain.budgets import Budgets, Limit
from spendstream.domain.grants import raised
from spendstream.domain.policy import measure, user_ladder
from spendstream.domain.pricing import Pricer
from spendstream.domain.totals import Contribution, Totals
from spendstream.domain.windows import (
    Period,
    Window,
    late_cutoff,
    window_from_key,
    window_of,
)
from spendstream.streams.flags import FlagStore
from spendstream.streams.grants import GRANT, granted
from spendstream.streams.stages import (
    AlertSink,
    Counters,
    Stage,
)
from spendstream.streams.state import BatchedState, identity_hash

PART = "r|"
"""Prefix of the partial sums stage one keeps for stage two's windows."""
GLOBAL_PERIODS: tuple[Period, ...] = ("minute", "hour", "day")

_ZERO = Decimal(0)
Forward = dict[tuple[int, str], dict[str, dict[str, Any]]]
"""(source partition, rollup key) -> {window key: absolute partial sums}."""


class UserSpend(msgspec.Struct, gc=False):
    """The value of a user's live spend key (``docs/contract.md``), its fields in the
    contract's order; the budget fields only when the user has a tier (``budget_usd`` and
    ``budget_tokens`` are then ``null`` when the tier does not limit them), the grant
    fields only after a grant. Money is a decimal string."""

    scope: str
    id: str
    tier: str
    spent_usd: Decimal
    spent_tokens: int
    events: int
    unpriced_events: int
    window_start: str
    window_end: str
    budget_usd: Decimal | None | msgspec.UnsetType = msgspec.UNSET
    budget_tokens: int | None | msgspec.UnsetType = msgspec.UNSET
    remaining_usd: Decimal | msgspec.UnsetType = msgspec.UNSET
    remaining_tokens: int | msgspec.UnsetType = msgspec.UNSET
    granted_usd: Decimal | msgspec.UnsetType = msgspec.UNSET
    granted_tokens: int | msgspec.UnsetType = msgspec.UNSET


_encode = msgspec.json.Encoder().encode


class UserStage(Stage):
    """Stage one, on the usage topic's partitions (partitioned by user)."""

    state: BatchedState

    def __init__(self, budgets: Budgets, pricer: Pricer, state: BatchedState,
                 flags: FlagStore, alerts: AlertSink, grace: timedelta, counters: Counters
                 ) -> None:
        super().__init__(budgets, state, flags, alerts, grace, counters)
        self.pricer = pricer
        self._cutoff = 0.0
        self._now: datetime | None = None
        self._now_epoch = 0.0
        lowest = min(budgets.thresholds.warn, budgets.thresholds.cutoff)
        self._floors = {
            tier: (None if limit.usd is None else limit.usd * lowest,
                   None if limit.tokens is None else limit.tokens * lowest)
            for tier, limit in budgets.users.tiers.items()}
        """Per tier, the spend below which a user window cannot leave level OK."""
        self._minutes: dict[tuple[int, str, int, str | None, str, bool, bool], Totals] = {}
        """This batch's sums per (partition, feature, minute, provider, model, audited,
        priced): everything the stage-two windows need, summed before they are touched."""
        self._spans: dict[float, tuple[Window, int, str]] = {}
        """This batch's minutes (epoch seconds) and what :meth:`_span` says of them."""
        self._minute_at: dict[int, datetime] = {}
        """The start of each of this batch's minutes, by its epoch seconds (the per-minute
        sums are keyed by the number: a datetime is hashed anew at every lookup)."""
        self._clock = 0.0
        """The state's clock, read once per batch: when this batch's event ids were seen."""
        self._owner: dict[tuple[int, str], tuple[str, Window]] = {}
        """The user and day of each user window the batch touched (so judging it need not
        parse its key)."""

    def process(self, partition: int, offset: int, event: Decoded, now: datetime) -> bool:
        """Fold one decoded event; ``False`` for a duplicate (its ``user_id`` and
        ``event_id`` seen before).

        Whatever can fail for one event (pricing, its windows) is worked out before any
        state changes; what follows only adds bounded numbers (the decoder caps tokens and
        cost) to dicts. So an exception leaves the stage as it was, and the caller may
        dead-letter the event and go on with the batch (no poison pill).
        """
        user = event.user_id
        digest = identity_hash(user, event.event_id)
        part = self.state.part(partition)
        if digest in part.dedup:
            self.counters.duplicates += 1
            return False
        if now is not self._now:  # computed once per batch: this is the hot path
            self._now = now
            self._cutoff = late_cutoff(now, self.grace)
            self._clock = self.state.clock()
            self._spans.clear()
            self._minute_at.clear()
        priced = self.pricer.price_event(event)
        # Only provider-reported counts are worth auditing: an estimated event's input
        # is the app's own count already.
        ok = event.ok
        local = event.local_input_tokens if ok and not event.estimated else None
        # A failed call is counted but drains nothing: no money, and no tokens toward a
        # tier or the tokens-per-minute ceiling (a retry storm must not use up a day).
        c = Contribution(priced.cost, event.input_tokens + event.output_tokens if ok else 0,
                         ok, priced.priced, event.input_tokens, local,
                         event.finish_reason == "length", event.cache_hit is True)
        ts = event.ts
        secs = ts.timestamp()
        span = self._spans.get(secs - secs % 60)
        if span is None:
            span = self._span(ts)
        day, minute, prefix = span
        # --- from here on nothing can fail for this event ---
        part.remember(digest, offset, self._clock)
        counters = self.counters
        counters.events += 1
        if not priced.priced:
            counters.unpriced += 1
        if prefix is LATE:
            counters.late += 1
        key = (partition, f"{prefix}{user}|{day.key}")
        totals = self._dirty.get(key)
        if totals is None:
            totals = self._load(partition, key[1], day)
            self._owner[key] = (user, day)
        totals.add(c)
        # Every other window (and the calls and cache hits per feature) is summed per
        # minute of the batch first: a batch then costs a few hundred window updates
        # instead of six per event.
        group = (partition, event.feature, minute, event.provider, event.model,
                 local is not None, priced.priced)
        sums = self._minutes.get(group)
        if sums is None:
            sums = self._minutes[group] = Totals()
        sums.add(c, audit=True)
        return True

    def _span(self, ts: datetime) -> tuple[Window, int, str]:
        """The day window, the minute and the user-window prefix (late or not) of ``ts``,
        kept for the rest of the batch: most events of a batch share a few minutes."""
        day = window_of("day", ts)
        minute = window_of("minute", ts)  # never raises, even for year 1 or 9999
        span = (day, minute.start_epoch, LATE if day.ended_before(self._cutoff) else "u|")
        self._spans[minute.start_epoch] = span
        self._minute_at[minute.start_epoch] = minute.start
        return span

    def _spread(self) -> None:
        """Fold the batch's per-minute sums into the feature, global, audit and unpriced
        windows they fall in (each window's part for its source partition)."""
        # Feature and global windows do not depend on the model: sum the groups per
        # (partition, feature, minute) and per (partition, minute) first, so each of those
        # windows is looked up once per minute, not once per model and flag of the minute.
        features: dict[tuple[int, str, datetime], Totals] = {}
        minutes: dict[tuple[int, datetime], Totals] = {}
        calls = self.counters.calls
        minute_at = self._minute_at
        for (partition, feature, epoch, provider, model, audited, priced), sums in (
                self._minutes.items()):
            ts = minute_at[epoch]
            calls[feature, False] += sums.events - sums.cache_hits
            calls[feature, True] += sums.cache_hits
            total = features.get((partition, feature, ts))
            if total is None:
                total = features[(partition, feature, ts)] = Totals()
            total.merge(sums, audit=False)
            total = minutes.get((partition, ts))
            if total is None:
                total = minutes[(partition, ts)] = Totals()
            total.merge(sums, audit=False)
            if audited or not priced:
                day = window_of("day", ts)
                if audited:
                    self._part(partition, window_key("drift", f"{provider or '?'}/{model}",
                                                     "day", day.key), day, sums, audit=True)
                if not priced:
                    self._part(partition, window_key("unp", model, "day", day.key), day, sums)
        for (partition, feature, ts), sums in features.items():
            conf = self.budgets.features.get(feature)
            period: Period = conf.period if conf else "month"
            w = window_of(period, ts)
            self._part(partition, window_key("f", feature, period, w.key), w, sums)
        for (partition, ts), sums in minutes.items():
            for period in GLOBAL_PERIODS:
                w = window_of(period, ts)
                self._part(partition, window_key("g", GLOBAL, period, w.key), w, sums)
        self._minutes.clear()

    def _part(self, partition: int, key: str, window: Window, sums: Totals,
              audit: bool = False) -> None:
        """Add to this partition's part of a stage-two window (or its late twin)."""
        if window.ended_before(self._cutoff):
            key = LATE + key
        self._load(partition, PART + key, window).merge(sums, audit)

    def _value(self, partition: int, key: str, totals: Totals) -> bytes:
        # Per-user windows are most of the state: their end is in the key, not stored.
        if not key.startswith(PART):
            totals.end = 0
        return totals.encode()

    def _end_of(self, key: str, value: dict[str, Any]) -> int:
        if "end" in value:
            return int(value["end"])
        return window_from_key("day", key.rsplit("|", 1)[1]).end_epoch

    def _below_first_step(self, tier: str, totals: Totals) -> bool:
        """True when no threshold of the ladder is reached: most users, most of the day,
        judged without a division."""
        usd, tokens = self._floors[tier]
        return (usd is None or totals.usd < usd) and (tokens is None or totals.tokens < tokens)

    def _live_spend(self, window: Window) -> bool:
        """Whether ``window`` is the current one, so its spend is the user's live spend:
        started (an event dated a little ahead must not replace today's figures) and not
        over (Redis would drop the write)."""
        return window.start_epoch <= self._now_epoch < window.end_epoch

    def _limit(self, partition: int, user: str, wkey: str
               ) -> tuple[str, Limit | None, tuple[Decimal, int] | None]:
        """The user's tier, their limit of the day ``wkey`` (the tier's, raised by any
        grant) and what was granted, if anything."""
        users = self.budgets.users
        tier = users.tier_of(user)
        limit: Limit | None = users.tiers.get(tier)
        grant = (granted(self.state, partition, user, wkey)
                 if self.state.may_hold(partition, GRANT) else None)
        if grant is not None:
            limit = raised(limit, *grant)
        return tier, limit, grant

    def _publish_spend(self, user: str, window: Window, totals: Totals, tier: str,
                       limit: Limit | None, grant: tuple[Decimal, int] | None) -> None:
        """The user's live spend key (the window open now), with the budget a grant raised
        (one per touched user per batch, the worker's most frequent write: encoded in C)."""
        spend = UserSpend("user", user, tier, totals.usd, totals.tokens, totals.events,
                          totals.unpriced, window.start_text, window.end_text)
        if limit is not None:
            usd = spend.budget_usd = limit.usd
            tokens = spend.budget_tokens = limit.tokens
            if usd is not None:
                spend.remaining_usd = max(usd - totals.usd, _ZERO)
            if tokens is not None:
                spend.remaining_tokens = max(tokens - totals.tokens, 0)
        if grant is not None:  # the guard adds these to its own copy of the tier's budget
            spend.granted_usd, spend.granted_tokens = grant
        self.flags.set(keys.spend_user(user), _encode(spend), window.end_epoch)

    def republish(self, now: datetime) -> int:
        """Schedule every live user spend key again from the state (Redis came back
        empty); the number written."""
        self._now_epoch = now.timestamp()
        n = 0
        for partition, key, value in self.state.scan():
            if not key.startswith("u|"):
                continue
            _, user, wkey = split_key(key, 3)
            window = window_from_key("day", wkey)
            if self._live_spend(window):
                self._publish_spend(user, window, Totals.from_json(value),
                                    *self._limit(partition, user, wkey))
                n += 1
        return n

    def resend(self, partition: int) -> None:
        """Forward every partial of ``partition`` with the next batch (after a recovery, in
        case the last forward before a crash was lost while its state record was not)."""
        for key in self.state.keys(partition):
            if key.startswith(PART):
                self._load(partition, key, window_of_key(key[len(PART):]))

    def finish(self, now: datetime) -> Forward:
        """Judge every user window the batch touched, persist, and return the partials
        stage two must receive."""
        self._spread()
        self._now_epoch = now.timestamp()
        forward: Forward = defaultdict(dict)
        ladder = user_ladder(self.budgets.thresholds)
        for (partition, key), totals in self._dirty.items():
            if key.startswith(PART):
                name = key[len(PART):]
                forward[(partition, message_key(name))][name] = totals.sums()
            elif key.startswith("u|"):
                self._judge(partition, key, totals, ladder, now)
        self._commit()
        self._owner.clear()
        return forward

    def _judge(self, partition: int, key: str, totals: Totals, ladder: Any, now: datetime
               ) -> None:
        owner = self._owner.get((partition, key))
        if owner is None:  # loaded by a grant, not by an event
            _, user, wkey = split_key(key, 3)
            window = window_from_key("day", wkey)
        else:
            user, window = owner
        tier, limit, grant = self._limit(partition, user, window.key)
        if self._live_spend(window):
            self._publish_spend(user, window, totals, tier, limit, grant)
        if limit is None or (not totals.level and self._below_first_step(tier, totals)):
            return
        m = measure(totals, limit)
        reason = f"daily {m.unit} budget of tier {tier}"
        advanced = self._advance("user", user, totals, m, ladder, reason, window)
        if advanced is None:
            return
        tr, payload = advanced
        if tr.current >= Level.CUTOFF:
            self.flags.set(keys.cutoff_user(user), payload, window.end_epoch)
            self._alert(Alert("user", user, "budget", tr.current, tr.previous, m.spent,
                              m.budget, m.unit, window.start, window.end, now, reason))
