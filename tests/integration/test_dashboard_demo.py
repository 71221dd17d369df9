"""`spendstream demo` opens with the dashboard's URL, and the dashboard it starts shows the
demo's warning, cutoff and 120% alert (through the API and in headless chromium)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_demo_dashboard_shows_warning_cutoff_and_alert(redis_server, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "spendstream", "demo", "--keep-running", "--timeout", "120"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "SPENDSTREAM_REDIS_URL": redis_server.url})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_until(lambda: lines, 30, "the demo's first line")
        first = re.match(r"spendstream \| dashboard: (http://127\.0\.0\.1:\d+/)", lines[0])
        assert first, lines[0]
        url = first.group(1)
        wait_until(lambda: any("demo OK" in line for line in lines), 200, "demo OK",
                   check=lambda: proc.poll() is None or pytest.fail("".join(lines)))
        wait_until(lambda: any("still running (--keep-running)" in line for line in lines),
                   30, "the demo staying up")
        assert any("Inspect them with" in line for line in lines), lines
        flags = {f["key"] for f in _get(url + "api/flags")["flags"]}
        assert {"warn:user:acct-7", "cutoff:user:acct-7"} <= flags
        alerts = _get(url + "api/alerts")["alerts"]
        assert any(a["scope"] == "feature" and a["subject"] == "summarize"
                   and a["level"] in ("alert", "escalated") for a in alerts), alerts
        features = {f["feature"]: f for f in _get(url + "api/features")["features"]}
        assert features["summarize"]["status"] == "over"

        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector('#flags tr[data-flag="cutoff:user:acct-7"]')
            page.wait_for_selector('#alerts tr.level-alert[data-kind="budget"]')
            if os.environ.get("SPENDSTREAM_SCREENSHOTS"):
                shots = Path(os.environ["SPENDSTREAM_SCREENSHOTS"])
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / "demo.png"), full_page=True)
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    reader.join(10)
    assert "".join(lines).rstrip().endswith("spendstream | stopped")
