"""What the worker's two stages share: ports (state, flags, alerts), the rollup entry,
and the batch-local cache of windows that both fold into.

Stage one (``user_stage.py``) reads the usage topic, partitioned by user: it deduplicates
by ``event_id``, prices each event, keeps per-user windows and, per source partition, the
partial sums of every feature and global window. After each batch it forwards the partial
sums the batch changed (absolute values, one message per feature per batch) to the rollup
topic. Stage two (``rollup_stage.py``) reads the rollup topic, partitioned by feature
(plus ``*`` for global), keeps the latest partial of each source partition and judges the
window on their sum. Both pre-aggregate a whole batch before touching flags or alerts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from spendstream.contract import keys
from spendstream.contract.alert import Alert, Level
from spendstream.domain.budgets import Budgets
from spendstream.domain.ladder import Ladder, Transition, step
from spendstream.domain.policy import Measure
from spendstream.domain.totals import Totals
from spendstream.domain.windows import Window
from spendstream.streams.flags import FlagStore

ADJECTIVE = {"minute": "per-minute", "hour": "hourly", "day": "daily", "month": "monthly"}
RETENTION = timedelta(days=1)


class StateStore(Protocol):
    """Changelog-backed key/value state, partitioned like the topic that feeds it."""

    def get(self, partition: int, key: str) -> dict[str, Any] | None:
        """The stored value, or ``None``."""

    def put(self, partition: int, key: str, value: dict[str, Any] | None) -> None:
        """Store (``None`` deletes); logged with the batch at :meth:`commit`."""

    def get_raw(self, partition: int, key: str) -> bytes | None:
        """The stored value as compact JSON, or ``None``."""

    def put_raw(self, partition: int, key: str, value: bytes | None) -> None:
        """:meth:`put` of a value already encoded as compact JSON."""

    def scan(self) -> Iterable[tuple[int, str, dict[str, Any]]]:
        """Every partition, key and value held by this process."""

    def commit(self) -> int:
        """Log the batch's changes."""


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
    grants: int = 0
    """Grants and unblocks applied (``spendstream grant`` / ``unblock``)."""
    calls: Counter[tuple[str, bool]] = field(default_factory=Counter)
    """Counted calls per (feature, answered from the response cache): one increment per
    event, read only at scrape time (:meth:`by_feature`)."""

    def by_feature(self) -> dict[str, tuple[int, int]]:
        """Per feature: (calls, cache hits) this process counted since it started."""
        out: dict[str, tuple[int, int]] = {}
        for (feature, hit), n in list(self.calls.items()):
            calls, hits = out.get(feature, (0, 0))
            out[feature] = (calls + n, hits + n if hit else hits)
        return out


def flag_payload(scope: keys.Scope, subject: str, reason: str, level: Level, spent: Decimal,
                 budget: Decimal, unit: str, window: Window) -> dict[str, Any]:
    """The JSON value of a cutoff/warn key (:func:`spendstream.contract.keys.flag_value`)."""
    return keys.flag_value(scope, subject, reason, level.name.lower(), spent, budget, unit,
                           window.start_text, window.end_text)


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
        self._dirty: dict[tuple[int, str], Totals] = {}

    def _load(self, partition: int, key: str, window: Window) -> Totals:
        """The window's totals, cached for the rest of the batch."""
        totals = self._dirty.get((partition, key))
        if totals is None:
            totals = self._decode(partition, key, self.state.get_raw(partition, key))
            totals.end = window.end_epoch
            self._dirty[(partition, key)] = totals
        return totals

    def _decode(self, partition: int, key: str, raw: bytes | None) -> Totals:
        """The totals in a stored value (stage two also keeps the per-partition parts)."""
        return Totals.decode(raw)

    def _alert(self, alert: Alert) -> None:
        self.counters.alerts += 1
        self.alerts(alert)

    def _advance(self, scope: keys.Scope, subject: str, totals: Totals, m: Measure, ladder: Ladder,
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
        self.flags.set(keys.warn(scope, subject), payload, window.end_epoch)
        return tr, payload

    def _commit(self) -> None:
        put = self.state.put_raw
        for (partition, key), totals in self._dirty.items():
            put(partition, key, self._value(partition, key, totals))
        self._dirty.clear()
        self.state.commit()

    def _value(self, partition: int, key: str, totals: Totals) -> bytes:
        """What is stored for ``key``, as compact JSON (stage two adds the per-partition
        parts)."""
        return totals.encode()

    def _end_of(self, key: str, value: dict[str, Any]) -> int:
        """When the window stored under ``key`` ends (epoch seconds)."""
        return int(value.get("end", 0))

    def sweep(self, now: datetime) -> int:
        """Drop windows that can no longer receive events."""
        cutoff = (now - self.grace - RETENTION).timestamp()
        stale = [(p, k) for p, k, v in self.state.scan() if self._end_of(k, v) < cutoff]
        for partition, key in stale:
            self.state.put(partition, key, None)
        self.state.commit()
        self.counters.swept += len(stale)
        return len(stale)
