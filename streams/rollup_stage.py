"""Stage two: feature and global windows on the rollup topic's partitions."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from spendstream.contract import keys
from spendstream.contract.alert import Alert, Level
from spendstream.contract.rollup import split_key, window_of_key
from spendstream.domain.ladder import step
from spendstream.domain.policy import cap_ladder, feature_ladder, measure, pace_exceeded
from spendstream.domain.totals import Totals
from spendstream.domain.windows import Window, window_from_key
from spendstream.streams.stages import ADJECTIVE, Stage, flag_payload

log = logging.getLogger("spendstream.worker")

DRIFT_MIN_EVENTS = 20
"""Calls per provider/model and day before the token-inflation audit judges a drift."""


class RollupStage(Stage):
    """Stage two: feature and global windows, on the rollup topic's partitions.

    Each window keeps the latest partial sums of every source partition (with the source
    offset they reach) and is judged on their sum: a partial is replaced, never added, so
    a replayed or reordered forward cannot count anything twice.
    """

    live: dict[str, tuple[Decimal, Decimal | None, int]]
    """Each feature's spend in its newest period, its USD budget and that period's end
    (epoch seconds): what /metrics shows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parts: dict[tuple[int, str], dict[str, list[Any]]] = {}
        self.live = {}

    def process(self, partition: int, source: int, version: int,
                parts: dict[str, dict[str, Any]]) -> None:
        """Take the partial sums one source partition reached (at offset ``version``)."""
        tag = str(source)
        for key, sums in parts.items():
            totals = self._load(partition, key, window_of_key(key))
            stored = self._parts[(partition, key)]
            previous = stored.get(tag)
            if previous is not None and previous[0] >= version:
                continue
            stored[tag] = [version, sums]
            fresh = Totals(level=totals.level, pace=totals.pace, end=totals.end)
            for _, part in stored.values():
                fresh.merge(Totals.from_json(part))
            self._dirty[(partition, key)] = fresh

    def _decode(self, partition: int, key: str, raw: bytes | None) -> Totals:
        value = None if raw is None else orjson.loads(raw)
        self._parts[(partition, key)] = dict(value.get("parts", {})) if value else {}
        return Totals.from_json(value)

    def _value(self, partition: int, key: str, totals: Totals) -> bytes:
        value = totals.to_json()
        value["parts"] = self._parts[(partition, key)]
        return orjson.dumps(value)

    def _commit(self) -> None:
        super()._commit()
        self._parts.clear()

    def finish(self, now: datetime) -> None:
        """Evaluate every feature and global window the batch touched, then persist them."""
        for (_, key), totals in self._dirty.items():
            parts = split_key(key, 4)
            if parts[0] == "unp":
                self._unpriced(parts[1], window_from_key("day", parts[3]), totals, now)
            if parts[0] in ("f", "g"):
                self._publish_spend(parts, totals, now)
            if parts[0] == "f":
                self._evaluate_feature(parts[1], window_from_key(parts[2], parts[3]), totals,
                                       now)
            elif parts[0] == "g":
                self._evaluate_global(window_from_key(parts[2], parts[3]), totals,
                                      now)
            elif parts[0] == "drift":
                self._evaluate_drift(parts[1], window_from_key("day", parts[3]), totals, now)
        self._commit()

    def republish(self, now: datetime) -> int:
        """Schedule every live feature and global spend key again from the state (Redis
        came back empty); the number of windows read."""
        n = 0
        for _, key, value in self.state.scan():
            parts = split_key(key, 4)
            if parts[0] in ("f", "g"):
                window = window_from_key(parts[2], parts[3])
                if window.start <= now < window.end:
                    self._publish_spend(parts, Totals.from_json(value), now)
                    n += 1
        return n

    def _unpriced(self, model: str, d: Window, totals: Totals, now: datetime) -> None:
        """One alert per model and day whose events had no price."""
        if totals.level != Level.OK or not totals.unpriced:
            return
        totals.level = Level.ALERT
        log.warning("model %r has no price: its events are counted as unpriced "
                    "(add it under prices: in the budgets file)", model)
        self._alert(Alert("model", model, "unpriced", Level.ALERT, Level.OK,
                          Decimal(totals.unpriced), Decimal(0), "events", d.start, d.end,
                          now, "no price in the table or the budgets file's prices:"))

    def _evaluate_drift(self, subject: str, window: Window, totals: Totals, now: datetime
                        ) -> None:
        """Token-inflation audit: the provider's input counts against the apps' own, per
        provider/model and day; one alert when they differ by more than ``thresholds.drift``
        over at least :data:`DRIFT_MIN_EVENTS` calls."""
        if totals.level or totals.audited < DRIFT_MIN_EVENTS or totals.local_input <= 0:
            return
        ratio = Decimal(totals.reported_input) / Decimal(totals.local_input)
        if abs(ratio - 1) <= self.budgets.thresholds.drift:
            return
        totals.level = Level.ALERT
        direction = "more" if ratio > 1 else "fewer"
        detail = (f"the provider reported {abs(ratio - 1) * 100:.1f}% {direction} input tokens "
                  f"than the apps counted locally, over {totals.audited} calls")
        log.warning("token drift for %s: %s", subject, detail)
        self._alert(Alert("model", subject, "token_drift", Level.ALERT, Level.OK,
                          Decimal(totals.reported_input), Decimal(totals.local_input), "tokens",
                          window.start, window.end, now, detail))

    def _publish_spend(self, parts: list[str], totals: Totals, now: datetime) -> None:
        """Live spend of a feature's current period or a global window, for dashboards
        (never a window that has not started: the keys show the current one)."""
        kind, subject, period, wkey = parts
        window = window_from_key(period, wkey)
        if window.start > now:
            return
        name = keys.spend_feature(subject) if kind == "f" else keys.spend_global(period)
        value: dict[str, Any] = {
            "scope": "feature" if kind == "f" else "global", "id": subject, "period": period,
            "spent_usd": str(totals.usd), "spent_tokens": totals.tokens, "events": totals.events,
            "failed_events": totals.failed, "unpriced_events": totals.unpriced,
            "length_finishes": totals.truncated, "cache_hits": totals.cache_hits,
            "cache_hit_rate": (round(totals.cache_hits / totals.events, 4) if totals.events
                               else None),
            "window_start": window.start_text,
            "window_end": window.end_text}
        conf = self.budgets.features.get(subject) if kind == "f" else None
        if conf is not None and conf.usd is not None:
            value["budget_usd"] = str(conf.usd)
        newest = self.live.get(subject)
        if kind == "f" and (newest is None or window.end_epoch >= newest[2]):
            self.live[subject] = (totals.usd, conf.usd if conf else None, window.end_epoch)
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
                                 feature_ladder(self.budgets.thresholds, conf.cutoff), reason,
                                 window)
        if advanced is None:
            return
        tr, payload = advanced
        if tr.current >= Level.CUTOFF and conf.cutoff:
            self.flags.set(keys.cutoff_feature(feature), payload, window.end_epoch,
                           extend_only=True)
        self._alert(Alert("feature", feature, "budget", tr.current, tr.previous, m.spent,
                          m.budget, m.unit, window.start, window.end, now, reason))

    def _evaluate_global(self, window: Window, totals: Totals, now: datetime) -> None:
        g = self.budgets.global_
        if window.period == "hour" and g.hourly_usd_alert is not None:
            rule = ("spike", "hourly", totals.usd, g.hourly_usd_alert, "usd",
                    "hourly spend above hourly_usd_alert")
        elif window.period == "day" and g.daily_usd is not None:
            rule = ("daily_cap", "daily", totals.usd, g.daily_usd, "usd",
                    "global daily_usd cap")
        elif window.period == "minute" and g.tokens_per_minute is not None:
            rule = ("tpm", "tpm", Decimal(totals.tokens), Decimal(g.tokens_per_minute),
                    "tokens", "global tokens_per_minute ceiling")
        else:
            return
        kind, subject, spent, budget, unit, reason = rule
        tr = step(Level(totals.level), spent / budget if budget else Decimal(1), cap_ladder())
        if tr is None:
            return
        totals.level = tr.current
        if kind in ("daily_cap", "tpm"):
            payload = flag_payload("global", kind, reason, tr.current, spent, budget, unit, window)
            self.flags.set(keys.CUTOFF_GLOBAL, payload, window.end_epoch, extend_only=True)
        if kind == "tpm":
            # A per-minute ceiling can trip every minute: flag and log, never a Slack message.
            log.warning("global tokens per minute %s over %s: cutoff until %s", spent, budget,
                        window.end.isoformat())
            return
        # A spike cuts nothing off: it is announced as a warning.
        level, previous = (Level.WARN, Level.OK) if kind == "spike" else (tr.current,
                                                                          tr.previous)
        self._alert(Alert("global", subject, kind, level, previous, spent, budget, unit,
                          window.start, window.end, now, reason))

