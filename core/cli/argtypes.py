"""The command line's argument types: each turns one word into a value or says, in
argparse's own error line, what a valid one looks like."""

from __future__ import annotations

import argparse
from datetime import date
from decimal import Decimal, InvalidOperation

from spendstream.switch import MAX_TTL


def duration(text: str) -> int:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h`` or ``1d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = int(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90, 30m, 2h or 1d"
                                         ) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the TTL must be positive")
    if seconds > MAX_TTL:
        raise argparse.ArgumentTypeError(f"{text} is more than {MAX_TTL // 86400} days; "
                                         "leave --ttl out to disable until `spendstream enable`")
    return seconds


MAX_SECONDS = 3600.0
"""The longest --timeout: a query or a call that needs more is a mistake, not a wait."""


def seconds(text: str) -> float:
    """A positive, finite number of seconds up to :data:`MAX_SECONDS`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds like 30 or 2.5"
                                         ) from None
    if not 0 < value <= MAX_SECONDS:  # False for nan too
        raise argparse.ArgumentTypeError(f"{text} seconds: give more than 0 and at most "
                                         f"{MAX_SECONDS:g}")
    return value


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port: give 1 to 65535")
    return value


MAX_TOP = 100_000


def top(text: str) -> int:
    """Rows of a top-N section, 1 to :data:`MAX_TOP`."""
    value = count(text)
    if not 1 <= value <= MAX_TOP:
        raise argparse.ArgumentTypeError(f"{text} rows: give 1 to {MAX_TOP}")
    return value


def query(text: str) -> str:
    """One SQL statement; an empty one is a mistake (quoting), not a query of nothing."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "the query is empty; give one SQL statement in quotes, e.g. "
            "spendstream sql \"SELECT count(*) FROM cost_logs\"")
    return text


def day(text: str) -> date:
    """A date like ``2026-06-01``."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-06-01") from None


def fraction(text: str) -> Decimal:
    """A decimal from 0 to 1, e.g. ``0.02``."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number like 0.02") from None
    if not value.is_finite() or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction from 0 to 1 (0.02 = 2%)")
    return value


def count(text: str) -> int:
    """A whole number, zero or more."""
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value
