"""`spendstream audit` as a user runs it, against the fake OpenAI-compatible server: the
real ``openai`` client in a child process, the provider's prompt_tokens scripted."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fake_llm import FakeLLM, Reply
from fake_llm import fake_llm as fake_llm  # re-exported so pytest finds the fixture

from spendstream.audit import AUDIT_MESSAGES
from spendstream.producers.tokens import count_messages

pytestmark = pytest.mark.integration

KEY = "sk-audit-test-0123456789"
MODEL = "gpt-4"  # cl100k_base ships offline, so the local count is exact
LOCAL = count_messages(AUDIT_MESSAGES, MODEL)


def audit(base_url: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AUDIT_TEST_KEY": KEY}
    return subprocess.run(
        [sys.executable, "-P", "-m", "spendstream", "audit", "--base-url", base_url,
         "--model", MODEL, "--api-key-env", "AUDIT_TEST_KEY", *extra],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_local_count_is_exact_for_the_test_model() -> None:
    assert LOCAL.exact and LOCAL.encoding == "cl100k_base"


def test_an_exact_match_is_ok(fake_llm: FakeLLM, tmp_path: Path) -> None:
    fake_llm.script(Reply(input_tokens=LOCAL.tokens))
    done = audit(fake_llm.openai_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"provider count:  {LOCAL.tokens} prompt tokens" in done.stdout
    assert f"local count:     {LOCAL.tokens} prompt tokens (exact, cl100k_base)" in done.stdout
    assert "drift:           +0.00% (tolerance ±2.00%)" in done.stdout
    assert "verdict:         OK" in done.stdout
    assert "indicative" not in done.stdout
    [request] = fake_llm.requests
    assert request.json["messages"] == list(AUDIT_MESSAGES)
    assert request.json["max_tokens"] == 1
    auth = {k.lower(): v for k, v in request.headers.items()}["authorization"]
    assert auth == f"Bearer {KEY}"  # the key is sent...
    assert KEY not in done.stdout + done.stderr  # ...and never printed


def test_an_inflated_count_fails_with_exit_1(fake_llm: FakeLLM, tmp_path: Path) -> None:
    inflated = LOCAL.tokens + 5
    fake_llm.script(Reply(input_tokens=inflated))
    done = audit(fake_llm.openai_url, tmp_path)
    assert done.returncode == 1, done.stderr
    drift = (inflated - LOCAL.tokens) / LOCAL.tokens * 100
    assert f"drift:           +{drift:.2f}%" in done.stdout
    assert "verdict:         INFLATED" in done.stdout


def test_a_drift_within_the_tolerance_is_ok(fake_llm: FakeLLM, tmp_path: Path) -> None:
    fake_llm.script(Reply(input_tokens=LOCAL.tokens - 1))
    done = audit(fake_llm.openai_url, tmp_path, "--tolerance", "0.05")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tolerance ±5.00%" in done.stdout


def test_an_under_count_fails_with_exit_1(fake_llm: FakeLLM, tmp_path: Path) -> None:
    fake_llm.script(Reply(input_tokens=LOCAL.tokens // 2))
    done = audit(fake_llm.openai_url, tmp_path)
    assert done.returncode == 1
    assert "verdict:         UNDER-COUNTED" in done.stdout


def test_a_refused_key_exits_2_naming_the_variable_not_the_key(
        fake_llm: FakeLLM, tmp_path: Path) -> None:
    fake_llm.script(Reply(status=401))
    done = audit(fake_llm.openai_url, tmp_path)
    assert done.returncode == 2
    assert "$AUDIT_TEST_KEY" in done.stderr
    assert KEY not in done.stdout + done.stderr


def test_an_unreachable_url_exits_2_naming_it(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    done = audit(url, tmp_path)
    assert done.returncode == 2
    assert f"cannot connect to {url}" in done.stderr
    assert "check the URL" in done.stderr
    assert KEY not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
