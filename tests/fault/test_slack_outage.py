"""Slack misbehaves under a running worker: 429 with Retry-After, then 500s, then a reply
slower than the client's timeout. Aggregation does not wait for it, and once Slack answers
again every transition is posted exactly once, matching the alert topic one to one.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from decimal import Decimal
from functools import partial

import orjson
import pytest

from spendstream.alerts import DEFAULT_TIMEOUT
from spendstream.contract.keys import spend_feature
from tests.fault.faultkit import Ledger, Stack, send_usage
from tests.helpers import wait_until
from tests.slack_fake import Reply, SlackFake

pytestmark = [pytest.mark.integration, pytest.mark.fault]

BUDGETS = """\
users:
  tiers: {free: {usd: 0.05}}
features:
  chat: {period: month, usd: 0.5}
"""
RETRY_AFTER = 2
FAILURES = [
    Reply(429, headers={"Retry-After": str(RETRY_AFTER)}),
    Reply(500),
    Reply(500),
    Reply(503, delay=DEFAULT_TIMEOUT + 1.5),  # the client gives up first: a timeout
]
TEXT = re.compile(r"^spendstream (\w+): (\w+) (\S+) (\w+) at ")


def transitions_posted(slack: SlackFake) -> Counter[tuple[str, str, str, str]]:
    """(level, scope, subject, kind) of every post Slack accepted."""
    out: Counter[tuple[str, str, str, str]] = Counter()
    for post in slack.delivered:
        m = TEXT.match(post.json["text"])
        assert m, post.json["text"]
        level, scope, subject, kind = m.groups()
        out[(level.lower(), scope, subject, kind)] += 1
    return out


def test_alerts_survive_429_500_and_timeouts_exactly_once_without_stalling(
        broker, redis_url, uid, tmp_path):
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, BUDGETS, partitions=2)
    stack.create_topics()
    keys = stack.redis()
    ledger = Ledger()

    send = partial(send_usage, stack, ledger)

    with SlackFake() as slack:
        slack.script(*FAILURES)
        worker = stack.worker(SLACK_WEBHOOK_URL=slack.webhook_url)
        try:
            send("acct-1", 6, "0.01")  # cutoff of acct-1; chat at 12%
            wait_until(lambda: slack.requests, 60, "the first post to Slack",
                       check=worker.alive)
            # Slack is failing now; the stream goes on.
            send("acct-2", 6, "0.01")  # cutoff of acct-2
            send("acct-3", 30, "0.01")  # cutoff of acct-3; chat to 84%, then 1.2x...
            wait_until(lambda: ledger.counted(keys), 30, "totals while Slack fails",
                       check=worker.alive)
            counted_at = time.monotonic()
            assert not slack.delivered, "Slack recovered before the totals: no fault seen"
            assert ledger.mismatches(keys) == []
            spend = keys.get(spend_feature("chat"))
            assert Decimal(spend["spent_usd"]) == Decimal("0.42")

            # Every alert the worker raised is delivered once Slack recovers.
            done = wait_until(lambda: (st := worker.status())["alerts"] >= 4
                              and st["sent"] == st["alerts"] and st, 90,
                              "every alert posted after Slack recovered", check=worker.alive)
        finally:
            stack.close()
        assert worker.proc.returncode == 0, worker.output()
        requests = slack.requests
    alerts = [orjson.loads(a.value) for a in stack.read(".alerts", done["alerts"], 10)]
    expected = Counter((a["level"], a["scope"], a["subject"], a["kind"]) for a in alerts)
    assert {s for _, scope, s, _ in expected if scope == "user"} == {"acct-1", "acct-2", "acct-3"}
    posted = transitions_posted(slack)
    print(f"published {ledger.total} events, totals exact while Slack failed; {len(alerts)} "
          f"alerts, {len(requests)} requests to Slack, the first delivered "
          f"{slack.delivered[0].at - counted_at:.1f}s after the totals were exact")
    assert len(alerts) == done["alerts"] and done["failed"] == 0
    assert max(expected.values()) == 1, f"one alert per transition on the topic: {expected}"
    assert posted == expected  # each transition posted exactly once, nothing extra
    failed = [r.reply.status for r in requests if r not in slack.delivered]
    assert failed == [429, 500, 500, 503]
    assert requests[1].at - requests[0].at >= RETRY_AFTER  # Retry-After honoured
    assert requests[4].at - requests[3].at >= DEFAULT_TIMEOUT  # the slow reply timed out
    assert "s3cr3tW3bh00kP4th" not in worker.output()
