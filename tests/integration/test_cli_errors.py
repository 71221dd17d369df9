"""Configuration mistakes at the command line: one clear line and exit 2, fast."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spendstream.embedded import free_port
from spendstream.errors import ConfigError
from spendstream.producers import Emitter, SyncEmitter
from spendstream.settings import load_settings

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spendstream", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env})


def budgets(tmp_path: Path) -> str:
    path = tmp_path / "budgets.yaml"
    path.write_text("users: {tiers: {free: {usd: 1}}}\n")
    return str(path)


def test_an_unreachable_kafka_fails_fast_with_one_line(tmp_path):
    started = time.monotonic()
    out = cli("worker", env={"SPENDSTREAM_KAFKA_URL": f"kafka://127.0.0.1:{free_port()}",
                             "SPENDSTREAM_BUDGETS": budgets(tmp_path)})
    took = time.monotonic() - started
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, lines
    assert "did not answer within 10s" in lines[0] and "SPENDSTREAM_KAFKA_URL" in lines[0]
    assert took < 25, f"{took:.0f}s"


def test_a_mistyped_scheme_is_one_line_in_the_cli_and_a_config_error_in_the_emitter(tmp_path):
    out = cli("worker", env={"SPENDSTREAM_KAFKA_URL": "kafak://127.0.0.1:9092",
                             "SPENDSTREAM_BUDGETS": budgets(tmp_path)}, timeout=30)
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, lines
    assert "SPENDSTREAM_KAFKA_URL" in lines[0] and "kafak://" in lines[0]
    for make in (Emitter, SyncEmitter):
        with pytest.raises(ConfigError, match="unknown scheme 'kafak://'"):
            make("kafak://127.0.0.1:9092")
    with pytest.raises(ConfigError, match="SPENDSTREAM_KAFKA_URL"):
        load_settings(kafka_url="kafak://127.0.0.1:9092")


def test_up_with_a_budgets_file_that_does_not_exist_exits_2_like_worker(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    for command in ("up", "worker"):
        out = cli(command, env={"SPENDSTREAM_BUDGETS": missing}, timeout=30)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert "nope.yaml" in out.stderr and "example budgets" not in out.stdout + out.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    # `spendstream check ... | head -0`: the pipe is closed before the command writes.
    proc = subprocess.Popen([sys.executable, "-m", "spendstream", "check", budgets(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == "", err  # no BrokenPipeError, no "Exception ignored"


def test_a_dashboard_port_in_use_says_so_and_how_to_pick_another(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = cli("dashboard", "--port", str(port),
                  env={"SPENDSTREAM_BUDGETS": budgets(tmp_path)}, timeout=60)
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"spendstream: error: port {port} on 127.0.0.1 is in use")
    assert f"--port {port + 1}" in lines[0]


def test_a_grant_kafka_did_not_take_names_the_id_to_send_again(tmp_path):
    import re

    out = cli("grant", "acct-7", "--usd", "1",
              env={"SPENDSTREAM_KAFKA_URL": f"kafka://127.0.0.1:{free_port()}",
                   "SPENDSTREAM_BUDGETS": str(tmp_path / "absent.yaml")})
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, lines
    found = re.search(r"the grant ([0-9a-f]{32}) was not sent: .* send it again with the "
                      r"same grant id \(--id ([0-9a-f]{32});", lines[0])
    assert found and found[1] == found[2], lines[0]
