"""Event-time windows aligned to UTC: minute, hour, day and calendar month.

Pure functions over datetimes; the worker keys its aggregates by :attr:`Window.key`.
Any aware datetime has a window, none raises: the first and last windows of what
``datetime`` can hold are clipped to year 1 and to ``9999-12-31T23:59:59.999999Z`` (an
event dated there is absurd, but one such event must not stop a worker: issue 11).
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
_KEY_LENGTH = {"minute": 16, "hour": 13, "day": 10, "month": 7}
_FIRST = datetime.min.replace(tzinfo=UTC)
_LAST = datetime.max.replace(tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST_EPOCH = (_FIRST - _EPOCH) // timedelta(seconds=1)
_LAST_EPOCH = (_LAST - _EPOCH) // timedelta(seconds=1)
"""The last whole second ``datetime`` holds (``9999-12-31T23:59:59Z``)."""


def _text(t: datetime) -> str:
    # strftime's %Y drops leading zeros before year 1000 on glibc; keys must sort and parse.
    return (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:"
            f"{t.second:02d}Z")


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
        object.__setattr__(self, "key", _text(self.start)[:_KEY_LENGTH[self.period]])
        object.__setattr__(self, "start_epoch", int(self.start.timestamp()))
        object.__setattr__(self, "end_epoch", int(self.end.timestamp()))
        object.__setattr__(self, "start_text", _text(self.start))
        object.__setattr__(self, "end_text", _text(self.end))

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
    secs = ts.timestamp()  # defined for every aware datetime, even where UTC is out of range
    if period == "month":
        if secs < _FIRST_EPOCH:
            return _month(1, 1)
        if secs >= _LAST_EPOCH + 1:
            return _month(9999, 12)
        t = ts.astimezone(UTC)
        return _month(t.year, t.month)
    size = _SECONDS.get(period)
    if size is None:
        raise ValueError(f"unknown period {period!r}")
    start = int(secs - secs % size)
    return _fixed(period, min(max(start, _FIRST_EPOCH), _LAST_EPOCH - _LAST_EPOCH % size))


@lru_cache(maxsize=16384)
def _fixed(period: Period, start: int) -> Window:
    begin = datetime.fromtimestamp(start, UTC)
    size = _SECONDS[period]
    end = _LAST if start + size > _LAST_EPOCH else begin + timedelta(seconds=size)
    return Window(period, begin, end)


@lru_cache(maxsize=1024)
def _month(year: int, month: int) -> Window:
    start = datetime(year, month, 1, tzinfo=UTC)
    if month < 12:
        end = datetime(year, month + 1, 1, tzinfo=UTC)
    else:
        end = _LAST if year == _LAST.year else datetime(year + 1, 1, 1, tzinfo=UTC)
    return Window("month", start, end)


@lru_cache(maxsize=16384)
def window_from_key(period: Period, key: str) -> Window:
    """Inverse of :attr:`Window.key`."""
    start = datetime.strptime(key, _KEY_FORMAT[period]).replace(tzinfo=UTC)
    return window_of(period, start)
