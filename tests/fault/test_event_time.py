"""Duplicates, out-of-order and late events at the worker level.

* the same ``event_id`` published again (a producer retry, later, even with other values)
  is counted once, with the first copy's values;
* an event from yesterday, within the grace period, is counted in yesterday's windows:
  the feature's month total has it, today's user and global day totals do not;
* events beyond the grace period are counted as late (the status line), not in any window.

The grace period is set to the time since UTC midnight plus ten minutes, so yesterday is
still open and the day before yesterday is closed whatever the hour of the run.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from spendstream.contract.keys import spend_feature
from tests.fault.faultkit import Ledger, Stack, message, usage
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

BUDGETS = """\
users:
  tiers: {free: {usd: 1000}}
features:
  chat: {period: month, usd: 1000}
"""


def at(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_duplicates_once_out_of_order_in_their_window_late_counted_as_late(
        broker, redis_url, uid, tmp_path):
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    grace = int((now - midnight).total_seconds()) + 600
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, BUDGETS, partitions=2,
                  extra={"SPENDSTREAM_GRACE_SECONDS": str(grace)})
    stack.create_topics()
    keys = stack.redis()
    rng = random.Random(uid)
    user = "acct-t"

    today = [usage(user, cost=f"0.00{i + 1}", ts=at(now - timedelta(seconds=rng.randint(0, 60))))
             for i in range(9)]
    yesterday = [usage(user, cost="0.03", ts=at(midnight - timedelta(hours=h)))
                 for h in (1, 7, 23)]
    closed = [usage(user, cost="0.5", ts=at(midnight - timedelta(days=1, hours=h)))
              for h in (1, 12)]
    last_month = [usage(user, cost="0.7", ts=at(now - timedelta(days=40)))]
    late = closed + last_month
    retries = [dict(today[0]), dict(today[4]), dict(yesterday[1]), dict(closed[0])]
    changed = {**today[2], "cost_usd": "9.99", "input_tokens": 999}  # same id, other values

    stream = today + yesterday + late
    rng.shuffle(stream)  # out of order: event time jumps back and forth
    stream[5:5] = retries
    stream += [changed, today[8]]  # later retries, after other events
    assert len(stream) == len(today) + len(yesterday) + len(late) + len(retries) + 2

    worker = stack.worker()
    try:
        stack.publish(message(e) for e in stream)
        counted = wait_until(lambda: (s := worker.status())["events"] == len(
            today + yesterday + late) and s["duplicates"] == len(retries) + 2 and s, 60,
            "every event counted once", check=worker.alive)

        # Today's windows: today's events only, each once, with the first copy's values.
        day = Ledger()
        for e in today:
            day.add(e)
        wrong = day.settle(keys, 30, ("user", "global"), check=worker.alive)
        assert wrong == []
        # The month: today's, yesterday's and the day before's (when in this month).
        month = [e for e in today + yesterday + closed if e["ts"][:7] == at(now)[:7]]
        want = sum((Decimal(e["cost_usd"]) for e in month), Decimal(0))
        feature = wait_until(lambda: (f := keys.get(spend_feature("chat"))) and f["events"]
                             == len(month) and f, 30, "the feature's month total")
        assert Decimal(feature["spent_usd"]) == want
    finally:
        stack.close()
    assert worker.proc.returncode == 0, worker.output()
    assert counted["late"] == len(late)
    print(f"published {len(stream)} messages: {len(today)} today, {len(yesterday)} yesterday "
          f"(within grace), {len(late)} beyond grace, {len(retries) + 2} repeated ids; "
          f"worker status {counted}")
