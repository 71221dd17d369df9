"""The two stages of the worker, over ports: state, flags and alerts.

Stage one (:class:`UserStage`) reads the usage topic, partitioned by user: it
deduplicates by ``event_id``, prices each event, keeps per-user windows and forwards
one small entry per event to the rollup topic. Stage two (:class:`RollupStage`) reads
the rollup topic, partitioned by feature (plus ``*`` for global), and keeps feature and
global windows. Both fold events idempotently by source offset (see ``totals.py``) and
pre-aggregate a whole batch before touching state, flags or alerts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from spendstream.alerts.model import Alert, Level
from spendstream.alerts.state import Ladder, Transition, step
from spendstream.producers.budgets import Budgets
from spendstream.producers.event import UsageEvent
from spendstream.producers.pricing import Pricer
from spendstream.streams.flags import FlagStore
from spendstream.streams.policy import (
    Measure,
    cap_ladder,
    feature_ladder,
    measure,
    pace_exceeded,
    user_ladder,
)
from spendstream.streams.totals import Contribution, Totals
from spendstream.streams.windows import Period, Window, window_from_key, window_of

log = logging.getLogger("spendstream.worker")

GLOBAL = "*"
ADJECTIVE = {"minute": "per-minute", "hour": "hourly", "day": "daily", "month": "monthly"}
DEDUP_HORIZON = timedelta(days=1)
RETENTION = timedelta(days=1)


class StateStore(Protocol):
    """Changelog-backed key/value state, partitioned like the topic that feeds it."""

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value, or ``None``."""

    def put(self, partition: int, key: str, value: dict[str, Any] | None) -> None:
        """Store (``None`` deletes) and log the change to partition ``partition``."""

    def scan(self) -> Iterable[tuple[str, dict[str, Any]]]:
        """Every key and value held by this process."""


AlertSink = Callable[[Alert], bool]


@dataclass(slots=True)
class Counters:
    """What the worker has done, for status output and tests."""

    events: int = 0
    duplicates: int = 0
    late: int = 0
    dead_letters: int = 0
    unpriced: int = 0
    alerts: int = 0
    swept: int = 0


@dataclass(frozen=True, slots=True)
class Entry:
    """One event's contribution as forwarded to the rollup stage."""

    offset: int
    ts: float
    feature: str
    model: str
    contribution: Contribution

    def to_wire(self) -> list[Any]:
        """Compact list form for the rollup message."""
        c = self.contribution
        return [self.offset, self.ts, self.model, str(c.usd), c.tokens, int(c.ok), int(c.priced)]

    @classmethod
    def from_wire(cls, feature: str, row: list[Any]) -> Entry:
        """Inverse of :meth:`to_wire`."""
        off, ts, model, usd, tokens, ok, priced = row
        return cls(off, ts, feature, model, Contribution(Decimal(usd), tokens, bool(ok),
                                                         bool(priced)))


def flag_payload(scope: str, subject: str, reason: str, level: Level, spent: Decimal,
                 budget: Decimal, unit: str, window: Window) -> dict[str, Any]:
    """The JSON value of a cutoff/warn key, as documented in the README."""
    return {"scope": scope, "id": subject, "reason": reason, "level": level.name.lower(),
            "spent": str(spent), "budget": str(budget), "unit": unit,
            "window_start": window.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "window_end": window.end.strftime("%Y-%m-%dT%H:%M:%SZ")}


def split_key(key: str, n: int) -> list[str]:
    """Split ``kind|id|...`` into ``n`` parts; only the id may contain ``|``."""
    kind, rest = key.split("|", 1)
    return [kind, *rest.rsplit("|", n - 2)]


class _Stage:
    """Batch-local cache of the windows touched by the current batch."""

    def __init__(self, budgets: Budgets, state: StateStore, flags: FlagStore,
                 alerts: AlertSink, grace: timedelta, counters: Counters) -> None:
        self.budgets = budgets
        self.state = state
        self.flags = flags
        self.alerts = alerts
        self.grace = grace
        self.counters = counters
        self._dirty: dict[str, Totals] = {}

    def _fold(self, partition: int, key: str, window: Window, source: int, offset: int,
              c: Contribution) -> Totals:
        totals = self._dirty.get(key)
        if totals is None:
            totals = Totals.from_json(self.state.get(key))
            totals.end = window.end_epoch
            totals.partition = partition
            self._dirty[key] = totals
        totals.add(source, offset, c)
        return totals

    def _alert(self, alert: Alert) -> None:
        self.counters.alerts += 1
        self.alerts(alert)

    def _advance(self, scope: str, subject: str, totals: Totals, m: Measure, ladder: Ladder,
                 reason: str, window: Window) -> tuple[Transition, dict[str, Any]] | None:
        """Step the window's state machine; on a rise, store the level and set the warn flag.

        Returns the transition and the flag payload for the caller's scope-specific cutoff
        and alert, or ``None`` when the level did not change.
        """
        tr = step(Level(totals.level), m.ratio, ladder)
        if tr is None:
            return None
        totals.level = tr.current
        payload = flag_payload(scope, subject, reason, tr.current, m.spent, m.budget, m.unit,
                               window)
        self.flags.set(f"warn:{scope}:{subject}", payload, window.end_epoch)
        return tr, payload

    def _commit(self) -> None:
        for key, totals in self._dirty.items():
            self.state.put(totals.partition, key, totals.to_json())
        self._dirty.clear()

    def sweep(self, now: datetime) -> int:
        """Drop windows (and dedup ids) that can no longer receive events."""
        cutoff = (now - self.grace - RETENTION).timestamp()
        stale = [(k, v["p"]) for k, v in self.state.scan() if v.get("end", 0) < cutoff]
        for key, partition in stale:
            self.state.put(partition, key, None)
        self.counters.swept += len(stale)
        return len(stale)


class UserStage(_Stage):
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
        c = Contribution(priced.cost, event.total_tokens, event.ok, priced.priced)
        day = window_of("day", event.ts)
        if day.is_late(now, self.grace):
            self.counters.late += 1
            self._fold(partition, f"late|{event.user_id}|{day.key}", day, partition, offset, c)
        else:
            self._fold(partition, f"u|{event.user_id}|{day.key}", day, partition, offset, c)
            hour = window_of("hour", event.ts)
            self._fold(partition, f"uh|{event.user_id}|{hour.key}", hour, partition, offset, c)
        return Entry(offset, event.ts.timestamp(), event.feature, event.model, c)

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


class RollupStage(_Stage):
    """Stage two: feature and global windows, on the rollup topic's partitions."""

    def process(self, partition: int, key: str, source: int, entries: Iterable[Entry],
                now: datetime) -> None:
        """Fold the entries that one source partition sent for one feature (or ``*``)."""
        for e in entries:
            ts = datetime.fromtimestamp(e.ts, tz=now.tzinfo)
            if key == GLOBAL:
                self._fold_global(partition, source, e, ts, now)
            else:
                self._fold_feature(partition, source, key, e, ts, now)

    def _fold_or_late(self, partition: int, key: str, window: Window, source: int, e: Entry,
                      now: datetime) -> None:
        if window.is_late(now, self.grace):
            self._fold(partition, f"late|{key}", window, source, e.offset, e.contribution)
        else:
            self._fold(partition, key, window, source, e.offset, e.contribution)

    def _fold_feature(self, partition: int, source: int, feature: str, e: Entry, ts: datetime,
                      now: datetime) -> None:
        conf = self.budgets.features.get(feature)
        period: Period = conf.period if conf else "month"
        w = window_of(period, ts)
        self._fold_or_late(partition, f"f|{feature}|{period}|{w.key}", w, source, e, now)
        h = window_of("hour", ts)
        self._fold_or_late(partition, f"fh|{feature}|hour|{h.key}", h, source, e, now)

    def _fold_global(self, partition: int, source: int, e: Entry, ts: datetime,
                     now: datetime) -> None:
        for period in ("minute", "hour", "day"):
            w = window_of(period, ts)
            self._fold_or_late(partition, f"g|*|{period}|{w.key}", w, source, e, now)
        if not e.contribution.priced:
            d = window_of("day", ts)
            totals = self._fold(partition, f"unp|{e.model}|day|{d.key}", d, source, e.offset,
                                e.contribution)
            if totals.level == Level.OK:
                totals.level = Level.ALERT
                log.warning("model %r has no price: its events are counted as unpriced "
                            "(add it under prices: in the budgets file)", e.model)
                self._alert(Alert("model", e.model, "unpriced", Level.ALERT, Level.OK,
                                  Decimal(totals.unpriced), Decimal(0), "events", d.start, d.end,
                                  now, "no price in the table or the budgets file's prices:"))

    def finish(self, now: datetime) -> None:
        """Evaluate every feature and global window the batch touched, then persist them."""
        for key, totals in self._dirty.items():
            parts = split_key(key, 4)
            if parts[0] in ("f", "g"):
                self._publish_spend(parts, totals)
            if parts[0] == "f":
                self._evaluate_feature(parts[1], window_from_key(parts[2], parts[3]), totals,
                                       now)  # type: ignore[arg-type]
            elif parts[0] == "g":
                self._evaluate_global(window_from_key(parts[2], parts[3]), totals,
                                      now)  # type: ignore[arg-type]
        self._commit()

    def _publish_spend(self, parts: list[str], totals: Totals) -> None:
        """Live spend of a feature's current period or a global window, for dashboards."""
        kind, subject, period, wkey = parts
        window = window_from_key(period, wkey)  # type: ignore[arg-type]
        name = f"spend:feature:{subject}" if kind == "f" else f"spend:global:{period}"
        value: dict[str, Any] = {
            "scope": "feature" if kind == "f" else "global", "id": subject, "period": period,
            "spent_usd": str(totals.usd), "spent_tokens": totals.tokens, "events": totals.events,
            "failed_events": totals.failed, "unpriced_events": totals.unpriced,
            "window_start": window.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "window_end": window.end.strftime("%Y-%m-%dT%H:%M:%SZ")}
        conf = self.budgets.features.get(subject) if kind == "f" else None
        if conf is not None and conf.usd is not None:
            value["budget_usd"] = str(conf.usd)
        self.flags.set(name, value, window.end_epoch, extend_only=True)

    def _evaluate_feature(self, feature: str, window: Window, totals: Totals, now: datetime
                          ) -> None:
        conf = self.budgets.features.get(feature)
        limit = conf.limit if conf else None
        if conf is None or limit is None:
            return
        m = measure(totals, limit)
        if (window.period == "month" and not totals.pace and m.unit == "usd"
                and pace_exceeded(m.spent, m.budget, window.elapsed_fraction(now),
                                  self.budgets.thresholds.pace)):
            totals.pace = 1
            self._alert(Alert("feature", feature, "pace", Level.WARN, Level.OK, m.spent, m.budget,
                              m.unit, window.start, window.end, now,
                              f"month-to-date spend is ahead of the pro-rated budget "
                              f"({window.elapsed_fraction(now) * 100:.0f}% of the month gone)"))
        reason = f"{ADJECTIVE[window.period]} {m.unit} budget of feature {feature}"
        advanced = self._advance("feature", feature, totals, m,
                                 feature_ladder(self.budgets.thresholds), reason, window)
        if advanced is None:
            return
        tr, payload = advanced
        if tr.current >= Level.CUTOFF and conf.cutoff:
            self.flags.set(f"cutoff:feature:{feature}", payload, window.end_epoch,
                           extend_only=True)
        self._alert(Alert("feature", feature, "budget", tr.current, tr.previous, m.spent,
                          m.budget, m.unit, window.start, window.end, now, reason))

    def _evaluate_global(self, window: Window, totals: Totals, now: datetime) -> None:
        g = self.budgets.global_
        if window.period == "hour" and g.hourly_usd_alert is not None:
            rule = ("spike", totals.usd, g.hourly_usd_alert, "usd",
                    "hourly spend above hourly_usd_alert")
        elif window.period == "day" and g.daily_usd is not None:
            rule = ("daily_cap", totals.usd, g.daily_usd, "usd", "global daily_usd cap")
        elif window.period == "minute" and g.tokens_per_minute is not None:
            rule = ("tpm", Decimal(totals.tokens), Decimal(g.tokens_per_minute), "tokens",
                    "global tokens_per_minute ceiling")
        else:
            return
        kind, spent, budget, unit, reason = rule
        tr = step(Level(totals.level), spent / budget if budget else Decimal(1), cap_ladder())
        if tr is None:
            return
        totals.level = tr.current
        if kind in ("daily_cap", "tpm"):
            payload = flag_payload("global", kind, reason, tr.current, spent, budget, unit, window)
            self.flags.set("cutoff:global", payload, window.end_epoch, extend_only=True)
        if kind == "tpm":
            # A per-minute ceiling can trip every minute: flag and log, never a Slack message.
            log.warning("global tokens per minute %s over %s: cutoff until %s", spent, budget,
                        window.end.isoformat())
            return
        self._alert(Alert("global", kind, kind, tr.current, tr.previous, spent, budget, unit,
                          window.start, window.end, now, reason))
