"""Rendering an alert for Slack: amounts, windows, and escaping of user-supplied ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from spendstream.alerts.format import escape, format_amount, format_window, render
from spendstream.contract.alert import Alert, Level

D = Decimal
START = datetime(2026, 11, 23, tzinfo=UTC)
END = datetime(2026, 11, 24, tzinfo=UTC)


def make(**kw: Any) -> Alert:
    fields: dict[str, Any] = {
        "scope": "user",
        "subject": "acct-7",
        "kind": "budget",
        "level": Level.CUTOFF,
        "previous": Level.WARN,
        "spent": D("12.34"),
        "budget": D("12.00"),
        "unit": "usd",
        "window_start": START,
        "window_end": END,
        "at": datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
    }
    fields.update(kw)
    return Alert(**fields)


def all_text(blocks: list[dict[str, Any]]) -> str:
    """Every string in the blocks, so a test can look for what Slack would parse."""
    return json.dumps(blocks, ensure_ascii=False)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (D("12.34"), "usd", "$12.34"),
        (D("12.345"), "usd", "$12.35"),  # half up, not banker's
        (D("0"), "usd", "$0.00"),
        (D("1234567.8"), "usd", "$1,234,567.80"),
        (D("0.0042"), "usd", "$0.00420"),  # under a dollar: three significant digits
        (D("0.13"), "USD", "$0.130"),
        (D("0.014271"), "usd", "$0.0143"),
        (D("0.01"), "usd", "$0.0100"),
        (D("0.999"), "usd", "$0.999"),
        (D("1"), "events", "1 event"),
        (D("3"), "events", "3 events"),
        (D("-3.5"), "usd", "-$3.50"),
        (D("10000"), "tokens", "10,000 tokens"),
        (D("1234567"), "tokens", "1,234,567 tokens"),
        (D("999.5"), "tokens", "1,000 tokens"),
        (D("0"), "tokens", "0 tokens"),
        (D("3"), "<b>", "3 &lt;b&gt;"),
    ],
)
def test_format_amount(value: Decimal, unit: str, expected: str) -> None:
    assert format_amount(value, unit) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("acct-7", "acct-7"),
        ("a&b<c>d", "a&amp;b&lt;c&gt;d"),
        ("<@U123>", "&lt;@U123&gt;"),
        ("<!channel>", "&lt;!channel&gt;"),
        ("<!subteam^S123|@team>", "&lt;!subteam^S123|@team&gt;"),
        ("<https://evil.example|click>", "&lt;https://evil.example|click&gt;"),
        ("@here", "@\u2060here"),
        ("hi @channel and @EVERYONE", "hi @\u2060channel and @\u2060EVERYONE"),
        ("@hereafter", "@hereafter"),  # not a broadcast word
        ("mail@example.com", "mail@example.com"),
        ("&amp;", "&amp;amp;"),  # already-escaped text is shown as typed
        ("line1\nline2\r\tx", "line1 line2 x"),
    ],
)
def test_escape(raw: str, expected: str) -> None:
    assert escape(raw) == expected


def test_escape_cuts_before_escaping() -> None:
    assert escape("x" * 10, limit=5) == "xxxx…"
    assert escape("&" * 10, limit=3) == "&amp;&amp;…"


@pytest.mark.parametrize(
    "subject",
    ["<@U123>", "<!channel>", "<!here>", "@here", "@channel", "@everyone", "a&b<c>d"],
)
def test_hostile_subject_cannot_mention_or_link(subject: str) -> None:
    text, blocks = render(make(subject=subject, detail=f"see {subject}"))
    for rendered in (text, all_text(blocks)):
        assert "<@" not in rendered
        assert "<!" not in rendered
        for word in ("@here", "@channel", "@everyone"):
            assert word not in rendered
        # Every & that survives starts an entity we wrote ourselves.
        assert rendered.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "").count(
            "&"
        ) == 0


def test_fallback_says_what_crossed_what() -> None:
    text, _ = render(make(detail="tier free"))
    assert text == (
        "spendstream CUTOFF: user acct-7 budget at 102.8% ($12.34 of $12.00), "
        "window 2026-11-23 00:00 – 2026-11-24 00:00 UTC. tier free"
    )


def test_blocks_carry_every_field() -> None:
    _, blocks = render(make(detail="tier free"))
    assert blocks[0]["type"] == "header"
    assert "CUTOFF" in blocks[0]["text"]["text"]
    fields = {f["text"].split("\n")[0].strip("*"): f["text"].split("\n")[1]
              for f in blocks[1]["fields"]}
    assert fields == {
        "Scope": "user",
        "Subject": "acct-7",
        "Kind": "budget",
        "Level": "WARN → CUTOFF",
        "Spent": "$12.34",
        "Budget": "$12.00",
        "Percent": "102.8%",
        "Unit": "USD",
        "Window": "2026-11-23 00:00 – 2026-11-24 00:00 UTC",
    }
    assert blocks[2]["text"]["text"] == "*Detail:* tier free"
    assert len(blocks[1]["fields"]) <= 10  # Slack's limit per section


def test_tokens_alert() -> None:
    text, blocks = render(
        make(scope="global", subject="tpm", unit="tokens", spent=D("1250000"),
             budget=D("1000000"), level=Level.ALERT, previous=Level.OK)
    )
    assert "1,250,000 tokens of 1,000,000 tokens" in text
    assert "125.0%" in text
    assert "OK → ALERT" in all_text(blocks)


def test_zero_budget_is_not_zero_percent() -> None:
    text, _ = render(make(kind="budget", budget=D(0), spent=D("0.5")))
    assert "0.0%" not in text and "$0.500" in text


def test_unpriced_model_reads_as_a_count() -> None:
    text, blocks = render(make(scope="model", subject="gpt-9", kind="unpriced", unit="events",
                               spent=D(1), budget=D(0), level=Level.ALERT, previous=Level.OK,
                               detail="no price in the table or the budgets file's prices:"))
    assert text.startswith("spendstream ALERT: model gpt-9 unpriced: 1 event, window ")
    assert "no budget" not in text and "of 0" not in text
    assert "*model* gpt-9 crossed *ALERT* on *unpriced*: 1 event." in all_text(blocks)


def test_small_amounts_keep_their_digits() -> None:
    text, _ = render(make(spent=D("0.014271"), budget=D("0.01")))
    assert "at 142.7% ($0.0143 of $0.0100)" in text


@pytest.mark.parametrize(("subject", "kind", "level", "phrase"), [
    ("hourly", "spike", Level.WARN, "spendstream WARN: global hourly spike at 142.7%"),
    ("daily", "daily_cap", Level.CUTOFF, "spendstream CUTOFF: global daily cap at 142.7%"),
])
def test_global_alerts_read_once(subject: str, kind: str, level: Level, phrase: str) -> None:
    text, _ = render(make(scope="global", subject=subject, kind=kind, level=level,
                          previous=Level.OK, spent=D("71.35"), budget=D("50")))
    assert text.startswith(phrase), text


def test_no_detail_no_detail_block() -> None:
    text, blocks = render(make())
    assert not text.endswith(". ")
    assert all("Detail" not in json.dumps(b) for b in blocks)


def test_window_in_utc_whatever_the_input_zone() -> None:
    cet = timezone(timedelta(hours=1))
    start = datetime(2026, 11, 23, 1, 0, tzinfo=cet)
    naive_end = datetime(2026, 11, 24, 0, 0)  # taken as UTC, not local time
    assert format_window(start, naive_end) == "2026-11-23 00:00 – 2026-11-24 00:00 UTC"


def test_huge_subject_stays_within_slack_limits() -> None:
    text, blocks = render(make(subject="&" * 10_000, detail="<" * 10_000))
    for block in blocks:
        for f in block.get("fields", []):
            assert len(f["text"]) <= 2000
        if "text" in block and block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
    assert len(blocks[0]["text"]["text"]) <= 150
    assert len(text) < 40_000
