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
