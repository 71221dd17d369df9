"""Stage one: dedup, pricing and per-user day windows on the usage topic's partitions."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from spendstream.alerts.model import Alert, Level
from spendstream.producers.budgets import Budgets
from spendstream.producers.event import UsageEvent
from spendstream.producers.pricing import Pricer
from spendstream.streams.flags import FlagStore
from spendstream.streams.policy import measure, user_ladder
from spendstream.streams.stages import (
    DEDUP_HORIZON,
    AlertSink,
    Counters,
    Entry,
    Stage,
    StateStore,
    split_key,
)
from spendstream.streams.totals import Contribution
from spendstream.streams.windows import window_from_key, window_of


class UserStage(Stage):
    """Stage one: dedup, pricing and per-user windows on the usage topic's partitions."""

    def __init__(self, budgets: Budgets, pricer: Pricer, state: StateStore, flags: FlagStore,
                 alerts: AlertSink, grace: timedelta, counters: Counters) -> None:
        super().__init__(budgets, state, flags, alerts, grace, counters)
        self.pricer = pricer

    def process(self, partition: int, offset: int, event: UsageEvent, now: datetime
                ) -> Entry | None:
        """Fold one decoded event; return what to forward, or ``None`` for a duplicate."""
        id_key = "id|" + event.event_id
        seen = self.state.get(id_key)
        if seen is not None and seen["off"] != offset:
            self.counters.duplicates += 1
            return None
        if seen is None:
            self.state.put(partition, id_key,
                           {"off": offset, "p": partition,
                            "end": int((now + DEDUP_HORIZON).timestamp())})
        self.counters.events += 1
        priced = self.pricer.price_event(event)
        if not priced.priced:
            self.counters.unpriced += 1
        # Only provider-reported counts are worth auditing: an estimated event's input
        # is the app's own count already.
        local = event.local_input_tokens if event.ok and not event.estimated else None
        c = Contribution(priced.cost, event.total_tokens, event.ok, priced.priced,
                         event.input_tokens, local, event.finish_reason == "length")
        day = window_of("day", event.ts)
        if day.is_late(now, self.grace):
            self.counters.late += 1
            self._fold(partition, f"late|{event.user_id}|{day.key}", day, partition, offset, c)
        else:
            self._fold(partition, f"u|{event.user_id}|{day.key}", day, partition, offset, c)
            hour = window_of("hour", event.ts)
            self._fold(partition, f"uh|{event.user_id}|{hour.key}", hour, partition, offset, c)
        return Entry(offset, event.ts.timestamp(), event.feature, event.model, c, event.provider)

    def finish(self, now: datetime) -> None:
        """Evaluate every user window the batch touched, then persist them."""
        ladder = user_ladder(self.budgets.thresholds)
        for key, totals in self._dirty.items():
            kind, user, wkey = split_key(key, 3)
            if kind != "u":
                continue
            window = window_from_key("day", wkey)
            limit = self.budgets.users.limit_of(user)
            spend: dict[str, Any] = {
                "scope": "user", "id": user, "tier": self.budgets.users.tier_of(user),
                "spent_usd": str(totals.usd), "spent_tokens": totals.tokens,
                "events": totals.events, "unpriced_events": totals.unpriced,
                "window_end": window.end.strftime("%Y-%m-%dT%H:%M:%SZ")}
            if limit is not None:
                spend["budget_usd"] = None if limit.usd is None else str(limit.usd)
                spend["budget_tokens"] = limit.tokens
                if limit.usd is not None:
                    spend["remaining_usd"] = str(max(limit.usd - totals.usd, Decimal(0)))
                if limit.tokens is not None:
                    spend["remaining_tokens"] = max(limit.tokens - totals.tokens, 0)
            self.flags.set(f"spend:user:{user}", spend, window.end_epoch, extend_only=True)
            if limit is None:
                continue
            m = measure(totals, limit)
            reason = f"daily {m.unit} budget of tier {self.budgets.users.tier_of(user)}"
            advanced = self._advance("user", user, totals, m, ladder, reason, window)
            if advanced is None:
                continue
            tr, payload = advanced
            if tr.current >= Level.CUTOFF:
                self.flags.set(f"cutoff:user:{user}", payload, window.end_epoch)
                self._alert(Alert("user", user, "budget", tr.current, tr.previous, m.spent,
                                  m.budget, m.unit, window.start, window.end, now, reason))
        self._commit()
