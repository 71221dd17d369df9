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
            # acct-2's and acct-3's events went out after Slack had refused the first post
            # (the scripted 429), so they were counted while Slack was failing. (Whether a
            # retry got through before the totals were exact is a race, not the point.)
            first = slack.requests[0]
            assert first.reply.status == 429 and first.at < counted_at
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
    # Alerts go out concurrently, so a retry is the next request with the same text.
    def retry_of(i: int) -> float:
        return next(r.at for r in requests[i + 1:] if r.json == requests[i].json)

    slow = next(i for i, r in enumerate(requests) if r.reply.status == 503)
    assert retry_of(0) - requests[0].at >= RETRY_AFTER  # Retry-After honoured
    assert retry_of(slow) - requests[slow].at >= DEFAULT_TIMEOUT  # the slow reply timed out
    assert "s3cr3tW3bh00kP4th" not in worker.output()


USER_BUDGETS = """\
users:
  tiers: {free: {usd: 0.05}}
features:
  chat: {period: month, usd: 1000}
"""


def posted_users(slack: SlackFake) -> Counter[str]:
    """How many times each user's cutoff was posted (accepted by Slack)."""
    return Counter(m.group(3) for p in slack.delivered
                   if (m := TEXT.match(p.json["text"])) and m.group(2) == "user")


def test_one_stuck_alert_holds_up_no_other(broker, redis_url, uid, tmp_path):
    """The first cutoff's post hangs past the client timeout: five other users' cutoffs
    are posted meanwhile, and the stuck one once, after its retry."""
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, USER_BUDGETS)
    stack.create_topics()
    ledger = Ledger()
    with SlackFake() as slack:
        slack.script(Reply(500, delay=DEFAULT_TIMEOUT + 10))
        worker = stack.worker(SLACK_WEBHOOK_URL=slack.webhook_url)
        try:
            send_usage(stack, ledger, "acct-stuck", 6, "0.01")
            first = wait_until(lambda: slack.requests, 60, "the first post", check=worker.alive)
            others = [f"acct-{i}" for i in range(5)]
            for user in others:
                send_usage(stack, ledger, user, 6, "0.01")
            wait_until(lambda: set(posted_users(slack)) >= set(others), 60, "the others",
                       check=worker.alive)
            waited = time.monotonic() - first[0].at
            assert waited < DEFAULT_TIMEOUT, f"the others waited {waited:.1f}s behind one post"
            assert "acct-stuck" not in posted_users(slack)
            wait_until(lambda: "acct-stuck" in posted_users(slack), 60, "the stuck one",
                       check=worker.alive)
        finally:
            stack.close()
    assert worker.proc.returncode == 0, worker.output()
    assert posted_users(slack) == Counter({u: 1 for u in ["acct-stuck", *others]})


@pytest.mark.slow
def test_alerts_left_at_a_clean_stop_are_posted_after_the_restart_once(
        broker, redis_url, uid, tmp_path):
    """Slack fails for the whole first run, which stops cleanly with its cutoff alerts
    undelivered; the next run posts each of them once (and nothing twice)."""
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, USER_BUDGETS)
    stack.create_topics()
    ledger = Ledger()
    users = [f"acct-{i}" for i in range(6)]
    with SlackFake() as down, SlackFake() as up:
        down.script(*[Reply(500)] * 1000)
        first = stack.worker("w", SLACK_WEBHOOK_URL=down.webhook_url)
        try:
            for user in users:
                send_usage(stack, ledger, user, 6, "0.01")
            wait_until(lambda: first.status()["alerts"] == len(users), 60, "six cutoffs",
                       check=first.alive)
            assert first.stop() == 0, first.output()
            assert "handed over to the next run" in first.output()
            assert not down.delivered
            second = stack.worker("w", SLACK_WEBHOOK_URL=up.webhook_url)
            wait_until(lambda: len(posted_users(up)) == len(users), 60,
                       "every cutoff posted by the next run", check=second.alive)
            assert second.stop() == 0, second.output()
            third = stack.worker("w", SLACK_WEBHOOK_URL=up.webhook_url)
            wait_until(third.ready, 60, "a third run", check=third.alive)
        finally:
            stack.close()
    alerts = stack.read(".alerts", len(users), 10)
    assert len(alerts) == len(users)  # published once, by the first run
    assert posted_users(up) == Counter(dict.fromkeys(users, 1))  # the third posted nothing
