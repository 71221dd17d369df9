"""Event-time windows aligned to UTC: minute, hour, day and calendar month.

Pure functions over datetimes; the worker keys its aggregates by :attr:`Window.key`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

Period = Literal["minute", "hour", "day", "month"]

_KEY_FORMAT = {
    "minute": "%Y-%m-%dT%H:%M",
    "hour": "%Y-%m-%dT%H",
    "day": "%Y-%m-%d",
    "month": "%Y-%m",
}


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open UTC interval ``[start, end)`` of one period."""

    period: Period
    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        """Compact, sortable identity such as ``2026-11-23`` or ``2026-11-23T10``."""
        return self.start.strftime(_KEY_FORMAT[self.period])

    @property
    def end_epoch(self) -> int:
        """The end as epoch seconds, for Redis ``EXPIREAT``."""
        return int(self.end.timestamp())

    def elapsed_fraction(self, now: datetime) -> Decimal:
        """How much of the window has passed at ``now``, between 0 and 1."""
        total = (self.end - self.start).total_seconds()
        done = min(max((now - self.start).total_seconds(), 0.0), total)
        return Decimal(str(round(done / total, 6)))

    def is_late(self, now: datetime, grace: timedelta) -> bool:
        """True when ``now`` is past the end of the window plus the grace period."""
        return now > self.end + grace


def window_of(period: Period, ts: datetime) -> Window:
    """The window of ``period`` that contains ``ts`` (any timezone; converted to UTC)."""
    t = ts.astimezone(UTC)
    if period == "minute":
        start = t.replace(second=0, microsecond=0)
        end = start + timedelta(minutes=1)
    elif period == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    elif period == "month":
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(
            month=start.month + 1
        )
    else:  # pragma: no cover - Literal guards this
        raise ValueError(f"unknown period {period!r}")
    return Window(period, start, end)


def window_from_key(period: Period, key: str) -> Window:
    """Inverse of :attr:`Window.key`."""
    start = datetime.strptime(key, _KEY_FORMAT[period]).replace(tzinfo=UTC)
    return window_of(period, start)
