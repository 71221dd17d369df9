"""Window bucketing: UTC alignment, month lengths, keys and lateness."""

from datetime import UTC, datetime, timedelta

import pytest

from spendstream.domain.windows import late_cutoff, window_from_key, window_of


def t(s: str) -> datetime:
    return datetime.fromisoformat(s)


@pytest.mark.parametrize(("period", "ts", "start", "end", "key"), [
    ("minute", "2026-11-23T10:05:59.999+00:00", "2026-11-23T10:05:00+00:00",
     "2026-11-23T10:06:00+00:00", "2026-11-23T10:05"),
    ("hour", "2026-11-23T10:59:59+00:00", "2026-11-23T10:00:00+00:00",
     "2026-11-23T11:00:00+00:00", "2026-11-23T10"),
    ("day", "2026-11-23T23:59:59+00:00", "2026-11-23T00:00:00+00:00",
     "2026-11-24T00:00:00+00:00", "2026-11-23"),
    # a local time east of UTC belongs to the UTC day it falls in
    ("day", "2026-11-24T01:00:00+02:00", "2026-11-23T00:00:00+00:00",
     "2026-11-24T00:00:00+00:00", "2026-11-23"),
    ("month", "2026-02-28T12:00:00+00:00", "2026-02-01T00:00:00+00:00",
     "2026-03-01T00:00:00+00:00", "2026-02"),
    ("month", "2026-12-31T23:59:59+00:00", "2026-12-01T00:00:00+00:00",
     "2027-01-01T00:00:00+00:00", "2026-12"),
])
def test_window_of(period, ts, start, end, key):
    w = window_of(period, t(ts))
    assert (w.start, w.end, w.key) == (t(start), t(end), key)
    assert w.start.tzinfo is not None and w.start.utcoffset() == timedelta(0)
    assert window_from_key(period, key) == w


def test_lateness_and_elapsed():
    w = window_of("day", datetime(2026, 11, 23, 12, tzinfo=UTC))
    grace = timedelta(minutes=10)
    assert not w.ended_before(late_cutoff(datetime(2026, 11, 24, 0, 9, tzinfo=UTC), grace))
    assert w.ended_before(late_cutoff(datetime(2026, 11, 24, 0, 11, tzinfo=UTC), grace))
    assert str(w.elapsed_fraction(datetime(2026, 11, 23, 6, tzinfo=UTC))) == "0.25"
    assert w.elapsed_fraction(datetime(2026, 11, 25, tzinfo=UTC)) == 1
