"""The README's first command: `spendstream demo` shows a warning, a cutoff and an alert."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from spendstream.contract.keys import DEFAULT_PREFIX, cutoff_user

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_demo_shows_warning_cutoff_and_alert_then_cleans_up(redis_server, tmp_path):
    out = subprocess.run(
        [sys.executable, "-P", "-m", "spendstream", "demo", "--timeout", "120"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env={**os.environ, "SPENDSTREAM_REDIS_URL": redis_server.url})
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    for seen in ("WARNING: acct-7", "CUTOFF: acct-7", "ALERT (alert): feature summarize",
                 "acct-7's next call refused", "demo OK"):
        assert seen in text, (seen, text)
    assert out.stdout.rstrip().endswith("spendstream | stopped")
    r = redis.Redis.from_url(redis_server.url)
    cutoff = r.get("spendstream-demo:" + cutoff_user("acct-7"))
    assert cutoff is not None and r.ttl("spendstream-demo:" + cutoff_user("acct-7")) > 0
    assert r.get(DEFAULT_PREFIX + cutoff_user("acct-7")) is None  # the demo kept to its prefix
