"""`spendstream --version` names the installed distribution's version."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from spendstream.cli import main


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"spendstream {version('spendstream')}"


MAIN_SETTINGS = ("SPENDSTREAM_KAFKA_URL", "SPENDSTREAM_REDIS_URL", "SPENDSTREAM_BUDGETS",
                 "SPENDSTREAM_DATABASE_URL", "SPENDSTREAM_APP_ID", "SPENDSTREAM_METRICS_PORT",
                 "SPENDSTREAM_GROUP_INSTANCE_ID", "docs/contract.md")


@pytest.mark.parametrize("argv", [["--help"], ["worker", "--help"]])
def test_help_names_the_main_settings_and_where_all_are(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    out = capsys.readouterr().out
    assert [name for name in MAIN_SETTINGS if name not in out] == []


def test_dashboard_help_names_its_write_actions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["dashboard", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "kill switch: disable and enable a feature" in out
    assert "per user: grant more budget today and unblock" in out
