"""Render an alert as Slack text: a one-line fallback and Block Kit blocks.

Pure: no I/O. User-supplied strings (subject, detail) are escaped for Slack mrkdwn so that
an id such as ``<!channel>`` or ``<@U123>`` cannot ping anyone or smuggle in a link.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from spendstream.contract.alert import Alert, Level

# Slack rejects the whole message (400 invalid_blocks) when a text object is too long, and
# a rejected alert is a lost alert; so user strings are cut before escaping, which can
# grow them up to 5x ("&" -> "&amp;"): 200 * 5 and 500 * 5 stay under the 2,000 (field)
# and 3,000 (section) limits.
_MAX_SUBJECT = 200
_MAX_DETAIL = 500

_CENT = Decimal("0.01")
_MAX_DECIMALS = 10

_BROADCAST = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
# U+2060 WORD JOINER: invisible, but Slack no longer sees "@here" as a word.
_JOINER = "\u2060"

_EMOJI = {
    Level.OK: ":white_check_mark:",
    Level.WARN: ":warning:",
    Level.CUTOFF: ":no_entry:",
    Level.ALERT: ":rotating_light:",
    Level.ESCALATED: ":fire:",
}


def escape(text: str, limit: int | None = None) -> str:
    """Make ``text`` safe to show verbatim inside Slack mrkdwn.

    Escapes ``&``, ``<`` and ``>`` (so ``<!channel>``, ``<@U...>`` and ``<url|label>``
    become plain text), breaks ``@channel``/``@here``/``@everyone`` with an invisible
    joiner, folds control characters (newlines included) into one space so that an id
    cannot forge extra lines, and cuts to ``limit`` characters first.
    """
    text = _CONTROL.sub(" ", text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BROADCAST.sub(lambda m: "@" + _JOINER + m.group(1), text)


def format_amount(value: Decimal, unit: str) -> str:
    """``$1,234.56`` for USD, ``12,345 tokens`` for tokens, ``3 events`` for events,
    ``<value> <unit>`` otherwise.

    Dollars keep cents, and amounts under a dollar three significant digits ($0.0143,
    $0.0100, $0.140), so that a small free-tier budget never reads as "$0.01 of $0.01".
    """
    u = unit.lower()
    if u == "usd":
        sign = "-" if value < 0 else ""
        mag = abs(value)
        q = _CENT
        if 0 < mag < 1:
            q = Decimal(1).scaleb(-min(max(2, 2 - mag.adjusted()), _MAX_DECIMALS))
        return f"{sign}${mag.quantize(q, rounding=ROUND_HALF_UP):,}"
    if u in ("tokens", "events"):
        n = value.quantize(Decimal(1), rounding=ROUND_HALF_UP)
        return f"{n:,} {u[:-1] if n == 1 else u}"
    return f"{value:,} {escape(unit, 20)}"


def format_percent(alert: Alert) -> str:
    """``104.2%``; ``no budget`` when the budget is zero (any spend exhausts it)."""
    if not alert.budget:
        return "no budget"
    return f"{alert.percent}%"


def _utc(ts: datetime) -> datetime:
    # A naive datetime is taken as UTC: astimezone() would read it as local time.
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def format_window(start: datetime, end: datetime) -> str:
    """``2026-11-23 00:00 – 2026-11-24 00:00 UTC``."""
    return f"{_utc(start):%Y-%m-%d %H:%M} – {_utc(end):%Y-%m-%d %H:%M} UTC"


def render(alert: Alert) -> tuple[str, list[dict[str, Any]]]:
    """The fallback text and the Block Kit blocks of one alert.

    The fallback is what notifications, screen readers and the log show; Slack parses it
    as mrkdwn too, so it is escaped like the blocks.
    """
    level = alert.level.name
    scope = escape(alert.scope, 40)
    kind = escape(alert.kind, 40)
    subject = escape(alert.subject, _MAX_SUBJECT)
    spent = format_amount(alert.spent, alert.unit)
    budget = format_amount(alert.budget, alert.unit)
    percent = format_percent(alert)
    window = format_window(alert.window_start, alert.window_end)
    transition = f"{alert.previous.name} → {level}"
    # "global daily_cap", not "global daily daily_cap"; "global hourly spike".
    what = (f"{scope} {kind.replace('_', ' ')}" if alert.scope == "global"
            and alert.kind.startswith(alert.subject) else f"{scope} {subject} {kind}")
    # Without a budget (an unpriced model) there is no percentage: say what was counted.
    amount = (f"at {percent} ({spent} of {budget})" if alert.budget else f": {spent}")

    text = f"spendstream {level}: {what} {amount}, window {window}".replace(" :", ":")
    detail = escape(alert.detail, _MAX_DETAIL) if alert.detail else ""
    if detail:
        text += f". {detail}"

    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            # Only our own vocabulary goes into plain_text: its escaping rules differ.
            "text": {
                "type": "plain_text",
                "text": f"{_EMOJI[alert.level]} {level}: {alert.scope} {alert.kind}"[:150],
                "emoji": True,
            },
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"*{scope}* {subject} crossed *{level}* on *{kind}*: "
                + (f"{spent} of {budget} ({percent})." if alert.budget else f"{spent}."),
            },
            "fields": [
                _field("Scope", scope),
                _field("Subject", subject),
                _field("Kind", kind),
                _field("Level", transition),
                _field("Spent", spent),
                _field("Budget", budget),
                _field("Percent", percent),
                _field("Unit", escape(alert.unit.upper(), 20)),
                _field("Window", window),
            ],
        },
    ]
    if detail:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Detail:* {detail}"}}
        )
    raised = f"spendstream · raised {_utc(alert.at):%Y-%m-%d %H:%M:%S} UTC"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": raised}]})
    return text, blocks


def _field(name: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": f"*{name}*\n{value}"}
