"""Periods and output formats of ``spendstream report`` and ``spendstream sql``."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson

from spendstream.errors import ConfigError
from spendstream.ledger import pgtext
from spendstream.ledger.queries import Report, Result
from spendstream.ledger.schema import next_month

PERIODS = ("today", "week", "month")


def parse_period(text: str, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC for ``today``, ``week`` (ISO, from Monday), ``month`` or
    ``FROM..TO`` (two dates, both days included: ``2026-11-01..2026-11-30``)."""
    today = now.astimezone(UTC).date()
    if text == "today":
        return _at(today), _at(today + timedelta(days=1))
    if text == "week":
        monday = today - timedelta(days=today.weekday())
        return _at(monday), _at(monday + timedelta(days=7))
    if text == "month":
        first = today.replace(day=1)
        return _at(first), _at(next_month(first))
    start_text, sep, end_text = text.partition("..")
    if not sep:
        raise ConfigError(f"period {text!r}: use today, week, month or FROM..TO "
                          "(e.g. 2026-11-01..2026-11-30)")
    try:
        start, end = date.fromisoformat(start_text), date.fromisoformat(end_text)
    except ValueError:
        raise ConfigError(f"period {text!r}: FROM and TO must be dates like 2026-11-01"
                          ) from None
    if end < start:
        raise ConfigError(f"period {text!r}: TO is before FROM")
    return _at(start), _at(end + timedelta(days=1))


def _at(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _cell(value: Any, places: int | None = None) -> str:
    return pgtext.text(value, places)


_ROUND = {"avg_output": 1, "avg_cost": 8, "cost_per_user": 8, "hit_rate": 4}
"""Averages are rounded for display (sums never are: they are exact)."""


def _shapes(result: Result) -> list[tuple[int | None, pgtext.Kind]]:
    """Per column: decimal places to round to, and whether it holds JSON."""
    types = result.types or (None,) * len(result.columns)
    return [(_ROUND.get(c), pgtext.kind_of(t)) for c, t in zip(result.columns, types,
                                                                 strict=True)]


def cells(result: Result) -> list[list[str]]:
    """Every value of ``result`` as PostgreSQL's text output shows it (exact decimals;
    averages rounded; ``true``, ``{1,2}``, ``\\x78``, ``1 day``, ``{"a": 1}``)."""
    shapes = _shapes(result)
    return [[pgtext.text(v, p, k) for v, (p, k) in zip(row, shapes, strict=True)]
            for row in result.rows]


def table(result: Result) -> str:
    """An aligned text table with a header line."""
    body = cells(result)
    widths = [max([len(c), *(len(r[i]) for r in body)]) for i, c in enumerate(result.columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(result.columns, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(line.rstrip() for line in lines)


def csv_text(result: Result, section: str | None = None) -> str:
    """CSV with a header row (a first ``section`` column when given)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(([] if section is None else ["section"]) + result.columns)
    for row in cells(result):
        w.writerow(([] if section is None else [section]) + row)
    return out.getvalue()


def records(result: Result) -> list[dict[str, Any]]:
    """Rows as objects: counts as integers, decimals as exact strings, NULL as null,
    booleans as booleans, ``json``/``jsonb`` nested, arrays as arrays."""
    shapes = _shapes(result)
    return [{c: pgtext.json_value(v, p, k)
             for c, v, (p, k) in zip(result.columns, row, shapes, strict=True)}
            for row in result.rows]


def render_result(result: Result, fmt: str) -> str:
    """One query's result as ``table``, ``csv`` or ``json``."""
    if fmt == "csv":
        return csv_text(result).rstrip("\n")
    if fmt == "json":  # the standard library's: jsonb may hold integers beyond 64 bits
        return json.dumps(records(result), indent=2, ensure_ascii=False)
    return table(result) if result.rows else table(result) + "\n(no rows)"


def render_report(report: Report, fmt: str) -> str:
    """The report's sections (the four questions and the grants) as ``table``, ``csv``
    (one section column) or ``json``."""
    f = report.filters
    sections = {"top features": report.features, "top users": report.users,
                "cost per user": report.totals, "model efficiency": report.models,
                "grants": report.grants}
    period = {"from": _cell(f.start), "to": _cell(f.end), "feature": f.feature,
              "user": f.user}
    if fmt == "json":
        body = {"period": period, **{k.replace(" ", "_"): records(v)
                                     for k, v in sections.items()}}
        return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
    if fmt == "csv":
        return "\n".join(csv_text(v, k).rstrip("\n") for k, v in sections.items())
    scope = "".join(f", {k} {v}" for k, v in (("feature", f.feature), ("user", f.user)) if v)
    head = (f"spend ledger report: {f.start:%Y-%m-%d %H:%M} to {f.end:%Y-%m-%d %H:%M} UTC"
            f"{scope} (from the hourly rollup)")
    parts = [head]
    for name, result in sections.items():
        parts.append(f"\n{name}\n{render_result(result, 'table')}")
    return "\n".join(parts)
