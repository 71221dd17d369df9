"""What the worker's two stages share: ports (state, flags, alerts), the rollup entry,
and the batch-local cache of windows that both fold into.

Stage one (``user_stage.py``) reads the usage topic, partitioned by user: it deduplicates
by ``event_id``, prices each event, keeps per-user windows and forwards one small entry
per event to the rollup topic. Stage two (``rollup_stage.py``) reads the rollup topic,
partitioned by feature (plus ``*`` for global), and keeps feature and global windows.
Both fold events idempotently by source offset (see ``totals.py``) and pre-aggregate a
whole batch before touching state, flags or alerts."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from spendstream.alerts.model import Alert, Level
from spendstream.alerts.state import Ladder, Transition, step
from spendstream.producers.budgets import Budgets
from spendstream.streams.flags import FlagStore
from spendstream.streams.policy import Measure
from spendstream.streams.totals import Contribution, Totals
from spendstream.streams.windows import Window

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
    provider: str | None = None

    def to_wire(self) -> list[Any]:
        """Compact list form for the rollup message."""
        c = self.contribution
        return [self.offset, self.ts, self.model, str(c.usd), c.tokens, int(c.ok), int(c.priced),
                self.provider, c.input_tokens, c.local_input_tokens, int(c.truncated)]

    @classmethod
    def from_wire(cls, feature: str, row: list[Any]) -> Entry:
        """Inverse of :meth:`to_wire`."""
        off, ts, model, usd, tokens, ok, priced, provider, inp, local, truncated = row
        return cls(off, ts, feature, model, Contribution(
            Decimal(usd), tokens, bool(ok), bool(priced), inp, local, bool(truncated)), provider)


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


class Stage:
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
              c: Contribution, audit: bool = False) -> Totals:
        totals = self._dirty.get(key)
        if totals is None:
            totals = Totals.from_json(self.state.get(key))
            totals.end = window.end_epoch
            totals.partition = partition
            self._dirty[key] = totals
        totals.add(source, offset, c, audit)
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
