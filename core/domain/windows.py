"""Event-time windows aligned to UTC: minute, hour, day and calendar month.

Pure functions over datetimes; the worker keys its aggregates by :attr:`Window.key`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
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
    key: str = field(init=False, compare=False)
    """Compact, sortable identity such as ``2026-11-23`` or ``2026-11-23T10``."""
    start_epoch: int = field(init=False, compare=False)
    end_epoch: int = field(init=False, compare=False)
    """The end as epoch seconds, for Redis ``EXPIREAT``."""
    start_text: str = field(init=False, compare=False)
    """The start as RFC 3339 (``2026-11-23T00:00:00Z``), as flags and alerts show it."""
    end_text: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once: windows are cached and their keys are read for every event.
        object.__setattr__(self, "key", self.start.strftime(_KEY_FORMAT[self.period]))
        object.__setattr__(self, "start_epoch", int(self.start.timestamp()))
        object.__setattr__(self, "end_epoch", int(self.end.timestamp()))
        object.__setattr__(self, "start_text", self.start.strftime("%Y-%m-%dT%H:%M:%SZ"))
        object.__setattr__(self, "end_text", self.end.strftime("%Y-%m-%dT%H:%M:%SZ"))

    def elapsed_fraction(self, now: datetime) -> Decimal:
        """How much of the window has passed at ``now``, between 0 and 1."""
        total = (self.end - self.start).total_seconds()
        done = min(max((now - self.start).total_seconds(), 0.0), total)
        return Decimal(str(round(done / total, 6)))

    def ended_before(self, cutoff: float) -> bool:
        """True when the window ended before epoch ``cutoff`` (see :func:`late_cutoff`)."""
        return self.end_epoch < cutoff


def late_cutoff(now: datetime, grace: timedelta) -> float:
    """Epoch second before which a window's events are late at ``now``: its end plus
    ``grace`` has passed. Computed once per batch; windows compare with it."""
    return (now - grace).timestamp()


_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def window_of(period: Period, ts: datetime) -> Window:
    """The window of ``period`` that contains ``ts`` (any timezone; converted to UTC).

    Minutes, hours and days are fixed lengths of UTC epoch seconds; a month is a calendar
    month. Windows are cached, so the per-event cost is one division and a lookup.
    """
    if period == "month":
        t = ts.astimezone(UTC)
        return _month(t.year, t.month)
    size = _SECONDS.get(period)
    if size is None:
        raise ValueError(f"unknown period {period!r}")
    secs = ts.timestamp()
    return _fixed(period, int(secs - secs % size))


@lru_cache(maxsize=16384)
def _fixed(period: Period, start: int) -> Window:
    begin = datetime.fromtimestamp(start, UTC)
    return Window(period, begin, begin + timedelta(seconds=_SECONDS[period]))


@lru_cache(maxsize=1024)
def _month(year: int, month: int) -> Window:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC) if month == 12 else datetime(
        year, month + 1, 1, tzinfo=UTC)
    return Window("month", start, end)


@lru_cache(maxsize=16384)
def window_from_key(period: Period, key: str) -> Window:
    """Inverse of :attr:`Window.key`."""
    start = datetime.strptime(key, _KEY_FORMAT[period]).replace(tzinfo=UTC)
    return window_of(period, start)
