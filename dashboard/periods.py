"""Time arithmetic the dashboard needs: a budget period's bounds and how much of it is
gone. Pure functions of an explicit ``now`` (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from spendstream.ledger.schema import next_month


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` of the ``minute``, ``hour``, ``day`` or ``month`` holding ``now``."""
    now = now.astimezone(UTC)
    if period == "minute":
        start = now.replace(second=0, microsecond=0)
        return start, start + timedelta(minutes=1)
    if period == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = datetime.combine(next_month(start.date()), start.timetz())
        return start, end
    raise ValueError(f"unknown period {period!r}")


def elapsed_fraction(start: datetime, end: datetime, now: datetime) -> Decimal:
    """The share of ``[start, end)`` gone at ``now``, 0 to 1, to six places."""
    total = (end - start).total_seconds()
    gone = min(max((now - start).total_seconds(), 0.0), total)
    return (Decimal(str(gone)) / Decimal(str(total))).quantize(Decimal("0.000001"))


def money(value: Decimal | None) -> str | None:
    """An exact decimal as text without trailing zeros (``0.0345``, ``12``), None stays."""
    if value is None:
        return None
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
