"""Two workers in one consumer group; one is SIGKILLed mid-stream.

Its partitions move to the survivor, which restores their state from the changelog and
resumes from the committed offsets: every total (global, per feature, per user) equals what
was published, to the cent, and a user pushed over budget has its cutoff flag.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from decimal import Decimal

import orjson
import pytest

from spendstream.contract.keys import cutoff_user
from tests.fault.faultkit import Ledger, Stack, message, usage
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

BUDGETS = """\
users:
  tiers: {free: {usd: 0.05}}
features:
  chat: {period: month, usd: 1000}
  search: {period: month, usd: 1000}
"""
USERS = 24
COSTS = ["0.0013", "0.0021", "0.00037", "0.0009"]  # sums a float would not keep exact


def test_sigkill_one_of_two_workers_moves_its_partitions_without_loss(broker, redis_url, uid,
                                                                     tmp_path):
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, BUDGETS, partitions=4,
                  extra={"SPENDSTREAM_SESSION_TIMEOUT": "3"})
    stack.create_topics()
    keys = stack.redis()
    ledger = Ledger()
    events = []
    for i in range(720):
        e = usage(f"user-{i % USERS}", "chat" if i % 3 else "search", COSTS[i % len(COSTS)])
        ledger.add(e)
        events.append(e)
    heavy = "user-heavy"  # crosses its $0.05 day budget; its events span the kill
    for i in range(30):
        e = usage(heavy, "chat", "0.002")  # 30 x $0.002 = $0.06
        ledger.add(e)
        events.insert(100 + i * 20, e)

    first, rest = events[:240], events[240:]
    a, b = stack.worker("a"), stack.worker("b")
    try:
        both = lambda: (a.alive(), b.alive())  # noqa: E731
        stack.publish(message(e) for e in first)
        wait_until(lambda: a.status()["events"] + b.status()["events"] >= len(first), 90,
                   "the first events counted", check=both)
        split = (a.status()["events"], b.status()["events"])
        assert min(split) > 0, f"one worker got no partitions: {split}"
        done = threading.Event()

        def produce() -> None:
            # About 100 events a second, so the kill lands in the middle of the stream.
            for start in range(0, len(rest), 10):
                stack.publish(message(e) for e in rest[start:start + 10])
                time.sleep(0.1)
            done.set()

        publisher = threading.Thread(target=produce, daemon=True)
        publisher.start()
        victim, survivor = a, b
        wait_until(lambda: victim.status()["events"] >= split[0] + 40, 30,
                   "the victim counting the second part", check=both)
        assert not done.is_set(), "the stream ended before the kill: slow it down"
        counted_by_victim = victim.status()["events"]
        victim.kill()
        publisher.join(60)
        assert done.is_set()
        wait_until(lambda: ledger.counted(keys), 90, "every event counted after the failover",
                   check=survivor.alive)
        wrong = ledger.settle(keys, 5)
    finally:
        stack.close()
    assert survivor.proc.returncode == 0, survivor.output()
    print(f"published {ledger.total} events to 4 partitions, {len(ledger.users())} users; "
          f"SIGKILL after the victim had counted {counted_by_victim} of them; after the "
          f"failover: {len(wrong)} totals wrong")
    assert wrong == []  # global, per feature, per user: events, USD (Decimal) and tokens
    over = [u for u in ledger.users() if ledger.usd[("user", u)] >= Decimal("0.05")]
    assert heavy in over and len(over) == 7
    lost = [u for u in over if keys.get(cutoff_user(u)) is None]
    assert lost == [], f"cutoff flags lost in the failover: {lost}"
    # One alert per transition, whichever worker raised it (README: "Alerts").
    alerts = [orjson.loads(m.value) for m in stack.read(".alerts", len(over) + 20, timeout=3)]
    per_transition = Counter((a["scope"], a["subject"], a["level"]) for a in alerts)
    assert sorted(s for _, s, _ in per_transition) == sorted(over), per_transition
    repeated = {k: n for k, n in per_transition.items() if n > 1}
    assert not repeated, f"alerts sent more than once for one transition: {repeated}"
    print(f"{len(over)} users over budget: {len(over)} cutoff flags, {len(alerts)} alerts")
