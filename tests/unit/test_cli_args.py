"""Bad numbers and paths on the command line: one clear line and exit 2, never a traceback.

The checks run in ``main()`` before any service is asked, so these need no broker, Redis
or PostgreSQL.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spendstream import switch
from spendstream.cli import main
from spendstream.dashboard.server import _bind_error, listen


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``; it must exit 2 with an error line (argparse's or ours)."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: usage line and error line
        code = e.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "1e12", "3601", "soon"])
@pytest.mark.parametrize("command", [["sql", "SELECT 1"], ["health"], ["demo"],
                                     ["audit", "--base-url", "http://x/v1", "--model", "m"]])
def test_timeouts_must_be_positive_finite_and_at_most_an_hour(
        command: list[str], value: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused([*command, "--timeout", value], capsys)
    assert "--timeout" in line
    assert "at most 3600" in line or "is not a number of seconds" in line


@pytest.mark.parametrize("ttl", ["99999999999999", "367d", "9000h", "0", "-5"])
def test_a_ttl_beyond_366_days_or_not_positive_is_refused(
        ttl: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(["disable", "chat", "--ttl", ttl], capsys)
    assert "--ttl" in line and ("366 days" in line or "must be positive" in line)


def test_the_switch_itself_refuses_a_ttl_that_would_overflow_the_date() -> None:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    with pytest.raises(ValueError, match="at most 31622400 seconds"):
        switch.disable("p:", "chat", "r", 99999999999999, now)
    assert switch.disable("p:", "chat", "r", switch.MAX_TTL, now).ttl == switch.MAX_TTL


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_a_dashboard_port_outside_1_to_65535_is_refused(
        port: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--port" in refused(["dashboard", "--port", port], capsys)


def test_a_port_in_use_is_named_with_how_to_pick_another() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as e:
            listen("127.0.0.1", port)
    message = _bind_error(e.value, "127.0.0.1", port)
    assert message == (f"port {port} on 127.0.0.1 is in use (another dashboard, or "
                       "`spendstream up`, which serves one?); pick another with --port, "
                       f"e.g. --port {port + 1}")


@pytest.mark.parametrize("top", ["-1", "0", "many"])
def test_report_top_must_be_a_positive_count(top: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert "--top" in refused(["report", "--top", top], capsys)


@pytest.mark.parametrize("query", ["", "   ", "\n"])
def test_an_empty_query_is_refused_before_connecting(
        query: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(["sql", query], capsys)
    assert "the query is empty" in line and "SELECT count(*) FROM cost_logs" in line


def test_init_into_a_missing_directory_says_so(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "nope" / "b.yaml"
    line = refused(["init", str(target)], capsys)
    assert line == (f"spendstream: error: cannot write {target}: the directory "
                    f"{target.parent} does not exist; create it first or give a path in an "
                    "existing one")
    assert not target.parent.exists()


@pytest.mark.parametrize(("extra", "named"), [
    (["--format", "json"], "--format"), (["--period", "today"], "--period"),
    (["--top", "5", "--user", "u"], "--user, --top")])
def test_report_digest_refuses_the_reports_options(
        extra: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(["report", "--digest", *extra], capsys)
    assert line.startswith(f"spendstream: error: report --digest takes no {named}: the "
                           "digest is always the 7 days before now, as text")


def test_check_prints_money_and_missing_budgets_in_words(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("users: {tiers: {free: {usd: 1}, pro: {tokens: 5000, usd: 2.25}}}\n"
                    "features: {s: {tokens: 1000, period: day}}\n"
                    "global: {hourly_usd_alert: 0.000001}\n")
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  user tier free: $1 (no token budget) per UTC day",
        "  user tier pro: $2.25 and 5000 tokens per UTC day",
        "  feature s: 1000 tokens (no USD budget) per day",
        "  global: hourly alert $0.000001, daily cap none, tokens/minute no limit",
        "  price overrides: none"]
