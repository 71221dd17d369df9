"""Odd inputs at a running worker (issue 12): each case is published to ``spendstream
worker`` as raw JSON and judged by what the worker leaves in Redis and the DLQ."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml

from spendstream.producers.budgets import parse_budgets
from spendstream.producers.guard import Guard
from tests.fault.faultkit import Stack, message, usage
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def at(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def reasons(dead: list) -> list[str]:
    return [dict(m.headers)["x-spendstream-reason"].decode() for m in dead]


FUTURE_BUDGETS = """\
users:
  tiers: {free: {usd: 1}}
features:
  chat: {period: month, usd: 1000, model: gpt-4o}
global:
  daily_usd: 10
"""


def test_future_dated_events_go_to_the_dlq_and_cut_nobody_off(broker, redis_url, uid,
                                                               tmp_path):
    """One event two days ahead over a user's budget and one three days ahead over the
    global cap: both dead-lettered with the skew, no cutoff flag, the guard admits, and
    the spend keys show today's window; an event a minute ahead is within the skew."""
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, FUTURE_BUDGETS)
    stack.create_topics()
    keys = stack.redis()
    now = datetime.now(UTC)
    events = [usage("acct-f", cost="5", ts=at(now + timedelta(days=2))),
              usage("acct-g", cost="50", ts=at(now + timedelta(days=3))),
              usage("acct-f", cost="0.01", ts=at(now + timedelta(seconds=60))),
              usage("acct-t", cost="0.02", ts=at(now))]
    worker = stack.worker()
    try:
        stack.publish(message(e) for e in events)
        wait_until(lambda: (s := worker.status())["events"] == 2 and s["dead_letters"] == 2,
                   60, "two counted, two dead-lettered", check=worker.alive)
        dead = stack.read(".dlq", 2)
        why = reasons(dead)
        assert len(why) == 2 and all("ahead of the worker's clock" in r for r in why), why
        assert any("SPENDSTREAM_MAX_FUTURE_SECONDS" in r for r in why)
        day = wait_until(lambda: keys.get("spend:global:day"), 30, "the global day key")
        today_end = (now.replace(hour=0, minute=0, second=0, microsecond=0)
                     + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert day["window_end"] == today_end and day["events"] >= 1
        assert keys.get("cutoff:user:acct-f") is None
        assert keys.get("cutoff:global") is None
        guard = Guard(redis_url, parse_budgets(yaml.safe_load(FUTURE_BUDGETS)),
                      prefix=stack.prefix, cache_ttl=0)
        try:
            assert guard.admit("acct-f", "chat", [{"role": "user", "content": "hi"}]).model
        finally:
            guard.close()
    finally:
        stack.close()
    assert worker.proc.returncode == 0, worker.output()


FAILED_BUDGETS = """\
users:
  tiers: {free: {tokens: 10000}}
global:
  tokens_per_minute: 10000
"""


def test_failed_calls_drain_no_token_budget(broker, redis_url, uid, tmp_path):
    """15,000 tokens of failed calls against a 10,000-token tier and a 10,000 tokens per
    minute ceiling: counted as calls, no cutoff of the user or of everyone."""
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, FAILED_BUDGETS)
    stack.create_topics()
    keys = stack.redis()
    events = [usage("acct-e", cost=None, status="error", input_tokens=1000, output_tokens=0)
              for _ in range(15)] + [usage("acct-e", cost="0.001")]
    worker = stack.worker()
    try:
        stack.publish(message(e) for e in events)
        spend = wait_until(lambda: (v := keys.get("spend:user:acct-e")) and v["events"] == 16
                           and v, 60, "16 calls counted", check=worker.alive)
        assert spend["spent_tokens"] == 120 and spend["remaining_tokens"] == 10000 - 120
        minute = wait_until(lambda: (v := keys.get("spend:global:day")) and v["events"] == 16
                            and v, 30, "the global day")
        assert minute["failed_events"] == 15 and minute["spent_tokens"] == 120
        assert keys.get("cutoff:user:acct-e") is None and keys.get("warn:user:acct-e") is None
        assert keys.get("cutoff:global") is None
    finally:
        stack.close()
    assert worker.proc.returncode == 0, worker.output()
