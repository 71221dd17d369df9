"""The weekly digest from a real ledger: `spendstream report --digest` prints it, and the
worker's digest service posts the same text through the real Slack webhook client to the
local Slack fake, once per scheduled time however many workers run it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import yaml

from spendstream.alerts.slack import SlackWebhookNotifier
from spendstream.dashboard.digest_service import DigestService
from spendstream.domain.budgets import parse_budgets
from tests.dashboard_stack import BUDGETS, Running, money, running  # noqa: F401
from tests.slack_fake import slack_fake  # noqa: F401

pytestmark = [pytest.mark.integration]


def _expected_lines(run: Running) -> list[str]:
    week = dict(run.sql("SELECT feature, SUM(cost_usd) FROM cost_logs GROUP BY 1"))
    return [f"- {f}: week ${money(Decimal(week[f]).quantize(Decimal('0.01')))} "
            for f in ("chat", "search", "summarize")]


def test_report_digest_prints_every_feature(running):  # noqa: F811
    env = running.env()
    env["SPENDSTREAM_BUDGETS"] = str(running.stack.tmp / "budgets.yaml")
    out = subprocess.run([sys.executable, "-m", "spendstream", "report", "--digest"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("spendstream weekly digest: ")
    for line in _expected_lines(running):
        assert line in text, (line, text)
    # search: $0.06 against a $0.05/day budget pro-rated over the month so far: under
    # unless the month is one day old; summarize: $0.75 of $50/month.
    assert "pro-rated: " in text and "top movers against the week before:" in text
    assert "- user acct-vip: $0.75 (+$0.75 (new))" in text


async def test_worker_digest_goes_to_slack_once_on_schedule(running, slack_fake):  # noqa: F811
    budgets = parse_budgets(yaml.safe_load(BUDGETS))
    real = datetime.now(UTC)
    target = (real + timedelta(minutes=1)).replace(second=0, microsecond=0)
    offset = target - real - timedelta(seconds=1)  # the services think it is 1 s before

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    schedule = f"{target:%a} {target:%H:%M}"
    services = [DigestService(schedule, running.database_url, running.stack.redis_url,
                              running.stack.prefix, budgets,
                              SlackWebhookNotifier(slack_fake.webhook_url), clock=clock)
                for _ in range(2)]  # two workers of one group
    for s in services:
        await s.start()
    try:
        got = await slack_fake.wait_for(1, timeout=20)
        await asyncio.sleep(1.5)  # room for a second (wrong) post to arrive
    finally:
        for s in services:
            await s.stop()
    assert len(slack_fake.requests) == 1
    assert sum(s.sent for s in services) == 1
    text = got[0].json["text"]
    assert text.startswith("spendstream weekly digest: ")
    for line in _expected_lines(running):
        assert line in text
