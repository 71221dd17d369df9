"""Redis goes away under a running worker, twice: frozen (SIGSTOP: connections hang), then
killed and restarted empty on the same port. Events that cross a user's budget arrive
meanwhile. The worker keeps counting and alerting, stays up, and once Redis answers again
the cutoff flags and the live spend converge to the exact totals.

The worker runs at ``--log-level debug`` with a Redis password and a Slack webhook that
only ever answers 500, so its log is full of Redis and Slack errors: neither the password
nor the webhook URL may appear in it.

The guard's side of a Redis outage (fail open / fail closed, never hanging) is
``tests/integration/test_guard_outage.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from functools import partial

import orjson
import pytest

from spendstream.contract.keys import cutoff_user, spend
from spendstream.embedded import EmbeddedRedis
from tests.fault.faultkit import Ledger, Stack, send_usage
from tests.helpers import wait_until
from tests.slack_fake import Reply, SlackFake

pytestmark = [pytest.mark.integration, pytest.mark.fault]

BUDGETS = """\
users:
  tiers: {free: {usd: 0.05}}
features:
  chat: {period: month, usd: 1000}
"""
BUDGET = Decimal("0.05")
PASSWORD = "r3dis-Pa55word-n0t-for-logs"


@pytest.fixture
def own_redis(tmp_path) -> Iterator[EmbeddedRedis]:
    """A Redis server for this test alone: it is frozen and killed."""
    server = EmbeddedRedis(workdir=tmp_path, password=PASSWORD)
    server.start()
    yield server
    server.stop()


def test_worker_rides_out_a_frozen_then_emptied_redis_and_logs_no_secret(
        broker, own_redis, uid, tmp_path):
    slack = SlackFake().start()
    slack.script(*[Reply(500)] * 100)
    secrets = (PASSWORD, slack.webhook_url, "s3cr3tW3bh00kP4th")
    stack = Stack(broker.bootstrap, broker.url, own_redis.url, uid, tmp_path, BUDGETS,
                  partitions=2)
    stack.create_topics()
    keys = stack.redis()
    ledger = Ledger()

    send = partial(send_usage, stack, ledger)

    worker = stack.worker(log_level="debug", SLACK_WEBHOOK_URL=slack.webhook_url)
    try:
        # Before: both users under budget, their spend written.
        send("frozen", 6, "0.0061")  # $0.0366
        send("restarted", 6, "0.0061")
        send("bystander", 3, "0.0007")
        wait_until(lambda: ledger.counted(keys), 60, "the first events", check=worker.alive)
        assert keys.get(cutoff_user("frozen")) is None

        # 1. Frozen Redis: the worker's writes hang until its socket timeout.
        own_redis.pause()
        try:
            send("frozen", 4, "0.0061")  # $0.061: over budget while Redis is frozen
            wait_until(lambda: worker.status()["events"] == ledger.total
                       and worker.redis_down(), 30,
                       "the worker counting with Redis frozen", check=worker.alive)
            alerts = stack.read(".alerts", 1, timeout=10)  # alerting does not wait on Redis
            assert [orjson.loads(a.value)["subject"] for a in alerts] == ["frozen"]
        finally:
            own_redis.resume()
        wait_until(lambda: keys.get(cutoff_user("frozen")), 30, "the cutoff flag after the freeze",
                   check=worker.alive)
        wait_until(lambda: not ledger.mismatches(keys), 30, "exact spend after the freeze")

        # 2. Redis killed and restarted empty on the same port (no persistence).
        own_redis.stop()
        send("restarted", 4, "0.0061")
        send("bystander", 2, "0.0007")
        wait_until(lambda: worker.status()["events"] == ledger.total
                   and worker.redis_down(), 30,
                   "the worker counting with Redis gone", check=worker.alive)
        own_redis.start()
        flag = wait_until(lambda: keys.get(cutoff_user("restarted")), 30,
                          "the cutoff flag after the restart", check=worker.alive)
        # A flag holds the spend of the batch that reached its level: the 9th event crossed
        # $0.05, and the 10th came in the same batch or a later one.
        assert Decimal(flag["spent"]) in (Decimal("0.0549"), Decimal("0.0610")), flag
        assert Decimal(flag["budget"]) == BUDGET
        # Keys touched during the outage are exact; "frozen" was not touched, and the
        # restart lost what Redis held, so it is checked apart.
        wait_until(lambda: all(
            keys.get(spend(s, k)) and Decimal(keys.get(spend(s, k))["spent_usd"])
            == ledger.usd[(s, k)] for s, k in [("user", "restarted"), ("user", "bystander"),
                                              ("feature", "chat"), ("global", "day")]),
            30, "exact spend after the restart", check=worker.alive)
        wrong = [w for w in ledger.mismatches(keys) if "'frozen'" not in w]
        assert wrong == []
        # "frozen" crossed its budget before Redis lost its data; it keeps spending.
        send("frozen", 1, "0.0061")
        wait_until(lambda: not ledger.mismatches(keys), 30, "exact spend of every key",
                   check=worker.alive)
        status = wait_until(lambda: (st := worker.status())["events"] == ledger.total and st,
                            10, "the counters on /metrics", check=worker.alive)
        frozen_flag = keys.get(cutoff_user("frozen"))
        assert slack.requests, "Slack was never tried"
    finally:
        stack.close()
        slack.stop()
    assert worker.proc.returncode == 0, worker.output()
    assert status["events"] == ledger.total and status["dead_letters"] == 0
    output = worker.output()
    for secret in secrets:
        assert secret not in output, f"a secret in the worker's log: {secret}"
    print(f"published {ledger.total} events, all counted; {len(slack.requests)} failed Slack "
          f"posts; worker log {len(output) // 1024} KiB at debug, no secret in it")
    assert frozen_flag is not None, (
        "BUG: the cutoff flag of a user over budget is not written again after Redis lost "
        "its data (restart without persistence): the worker writes flags only when a level "
        "changes, so guards admit this user until the window ends, while its spend key "
        "says remaining_usd 0")
