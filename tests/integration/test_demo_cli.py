"""The README's first command: `spendstream demo` shows a warning, a cutoff and an alert."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from spendstream.contract.keys import DEFAULT_PREFIX, cutoff_user

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]


def test_demo_shows_warning_cutoff_and_alert_then_cleans_up(redis_server, tmp_path):
    out = subprocess.run(
        [sys.executable, "-P", "-m", "spendstream", "demo", "--timeout", "120"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env={**os.environ, "SPENDSTREAM_REDIS_URL": redis_server.url})
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    # It opens with the dashboard's URL (demo's first line).
    assert re.match(r"spendstream \| dashboard: http://127\.0\.0\.1:\d+/", out.stdout), text
    for seen in ("WARNING: acct-7", "CUTOFF: acct-7", "ALERT (alert): feature summarize",
                 "acct-7's next call refused", "demo OK"):
        assert seen in text, (seen, text)
    assert out.stdout.rstrip().endswith("spendstream | stopped")
    # It does not send the user to a dashboard or ledger that are gone once it exits.
    assert "spendstream demo --keep-running" in text and "Inspect them with" not in text
    # It ends with the spend ledger's report, once the ledger holds every event.
    emitted = int(re.search(r"the spend ledger holds all (\d+) events", text).group(1))
    report = text[text.index("spend ledger report:"):]
    calls = [int(c) for c in re.findall(r"^(?:summarize|chat)\s+(\d+)\s", report, re.M)]
    assert len(calls) == 2 and sum(calls) == emitted, report
    assert re.search(r"^acct-7\s+\d+\s+0\.14\b", report, re.M), report  # cut off at $0.14
    data = Path(re.search(r"data in (\S+), deleted at exit", text).group(1))
    assert not data.exists()  # the embedded PostgreSQL's cluster went with the demo
    r = redis.Redis.from_url(redis_server.url)
    cutoff = r.get("spendstream-demo:" + cutoff_user("acct-7"))
    assert cutoff is not None and r.ttl("spendstream-demo:" + cutoff_user("acct-7")) > 0
    assert r.get(DEFAULT_PREFIX + cutoff_user("acct-7")) is None  # the demo kept to its prefix
