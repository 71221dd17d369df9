"""The values a query returns, as PostgreSQL prints them (``spendstream sql``'s table and
CSV) and as JSON (its ``--format json``).

psycopg hands over Python values (``True``, ``[1, 2]``, ``b'x'``, ``timedelta``, parsed
``jsonb``); ``str()`` of them is Python's spelling, not the database's. These functions
spell them as ``psql`` does (``true``, ``{1,2}``, ``\\x78``, ``1 day``, ``{"a": 1}``) and,
for JSON, keep structure: ``jsonb`` nested, arrays as arrays, booleans and whole numbers
as JSON's own, exact decimals as strings (as the report does). Which column is ``json``
is told by its type OID, since a ``jsonb`` array and an ``integer[]`` both load as lists.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

JSON_TYPES = frozenset({114, 3802})
"""OIDs of ``json`` and ``jsonb``."""
JSON_ARRAY_TYPES = frozenset({199, 3807})
"""OIDs of ``json[]`` and ``jsonb[]``."""

Kind = Literal["json", "json[]"] | None


def kind_of(oid: int | None) -> Kind:
    """Whether a column of type ``oid`` holds JSON values (or arrays of them)."""
    if oid in JSON_TYPES:
        return "json"
    if oid in JSON_ARRAY_TYPES:
        return "json[]"
    return None


def text(value: Any, places: int | None = None, kind: Kind = None) -> str:
    """``value`` as PostgreSQL's text output shows it (NULL as the empty string); decimals
    exact, or rounded to ``places`` without trailing zeros; timestamps ISO 8601 in UTC."""
    if value is None:
        return ""
    if kind == "json":
        return json_text(value)
    if isinstance(value, list):
        return array_text(value, json_items=kind == "json[]")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        if places is not None and value.is_finite():  # a rounded average: no trailing zeros
            value = round(value, places).normalize()
        return format(value, "f") if value.is_finite() else _special(float(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else _special(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, timedelta):
        return interval_text(value)
    if isinstance(value, date | time):
        return value.isoformat()
    return str(value)


def json_value(value: Any, places: int | None = None, kind: Kind = None) -> Any:
    """``value`` for a JSON document: null, booleans, whole numbers and finite floats as
    JSON's own; ``json``/``jsonb`` as the nested value; arrays as arrays; everything else
    (exact decimals, timestamps, ``bytea``, intervals) as its :func:`text`."""
    if value is None or isinstance(value, bool | str):
        return value
    if kind == "json":
        return value
    if isinstance(value, list):
        item: Kind = "json" if kind == "json[]" else None
        return [json_value(v, places, item) for v in value]
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return text(value, places)


def json_text(value: Any) -> str:
    """A ``json``/``jsonb`` value as ``jsonb`` prints it: ``{"a": 1, "b": [1, 2]}``."""
    return json.dumps(value, ensure_ascii=False)


def array_text(values: list[Any], json_items: bool = False) -> str:
    """An array as PostgreSQL prints it: ``{1,2}``, ``{"a b",NULL}``, ``{t,f}``,
    ``{{1,2},{3,4}}``."""
    parts = []
    for v in values:
        if v is None:
            parts.append("NULL")
        elif json_items:
            parts.append(_quoted(json_text(v)))
        elif isinstance(v, list):
            parts.append(array_text(v))
        elif isinstance(v, bool):
            parts.append("t" if v else "f")
        else:
            parts.append(_quoted(text(v)))
    return "{" + ",".join(parts) + "}"


def _quoted(item: str) -> str:
    if (item == "" or item.upper() == "NULL" or any(c in item for c in '{}",\\')
            or any(c.isspace() for c in item)):
        return '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return item


def interval_text(value: timedelta) -> str:
    """An interval as PostgreSQL prints it (``1 day``, ``2 days 03:00:00``,
    ``-00:00:01.5``). psycopg loads a month as 30 days, so months print as days."""
    micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    days, rest = divmod(abs(micros), 86400 * 1_000_000)
    seconds, fraction = divmod(rest, 1_000_000)
    parts = [f"{sign}{days} day{'' if days == 1 and not sign else 's'}"] if days else []
    if rest or not days:
        clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if fraction:
            clock += f".{fraction:06d}".rstrip("0")
        parts.append(sign + clock)
    return " ".join(parts)


def _special(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
