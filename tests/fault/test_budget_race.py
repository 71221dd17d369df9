"""The budget promise under concurrency: many calls for one user at the edge of the budget,
through the real :class:`~spendstream.producers.guard.Guard`, a real emitter, broker and
worker.

Each call is admit → a fake model call (sleeps, answers at most ``max_tokens``) → record.
Spend is counted after the fact, so calls slip past the budget until the cutoff flag is in
Redis and the guard's flag cache has expired. The design bounds that overshoot:

    overshoot ≤ (calls in flight when spend crossed the budget + 1) × max cost of a call
               + flag latency × call rate × max cost of a call

where flag latency = crossing → cutoff key in Redis (the worker) + the guard's cache TTL,
and max cost = the feature's ``max_output_tokens`` and the prompt at the override prices.
The test prints the bound and the measured overshoot, checks the overshoot against the
bound, the worker's latency against "within seconds", and the worker's total against the
sum of what the calls recorded, to the cent.

With ``reservations:`` in the budgets file the same race runs again: ``admit`` holds each
call's worst case (prompt + ``max_tokens`` at the price) in Redis until ``record``
settles it, so the calls in flight count before they are spent and the bound is 0: the
day's spend never passes the budget. The test prints how much of the budget was left
unused (the price of refusing on the worst case).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from decimal import Decimal

import pytest
import yaml

from spendstream.contract.keys import cutoff_user, spend_user
from spendstream.domain.budgets import parse_budgets
from spendstream.errors import BudgetExceeded
from spendstream.producers import SyncEmitter
from spendstream.producers.guard import Guard
from tests.fault.faultkit import Stack, message, usage
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

BUDGET = Decimal("0.50")
PREFILL = Decimal("0.45")  # the user starts at 90% of the day's budget
BUDGETS = f"""\
users:
  tiers: {{free: {{usd: {BUDGET}}}}}
features:
  chat: {{period: month, usd: 1000, max_output_tokens: 1000, model: gpt-4o}}
prices:
  gpt-4o: {{input: 2.50, output: 10.00}}
"""
INPUT, OUTPUT = Decimal("2.50"), Decimal("10.00")
THREADS = 8
MODEL_SECONDS = 0.05
CACHE_TTL = 1.0  # the guard's default (SPENDSTREAM_GUARD_CACHE_TTL)
FLAG_WITHIN = 5.0  # "cutoff flags in Redis within seconds" (README)
USER = "acct-edge"
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Summarise the week's incidents in three bullets."}]


def cost(input_tokens: int, output_tokens: int) -> Decimal:
    return (input_tokens * INPUT + output_tokens * OUTPUT) / Decimal(1_000_000)


@dataclass(frozen=True)
class Call:
    admitted: float
    recorded: float
    cost: Decimal


@pytest.mark.parametrize("reserve", [False, True], ids=["flags-only", "reservations"])
def test_concurrent_calls_overshoot_the_budget_within_the_design_bound(broker, redis_url, uid,
                                                                      tmp_path, reserve):
    text = BUDGETS + ("reservations: {}\n" if reserve else "")
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, text, partitions=2)
    stack.create_topics()
    keys = stack.redis()
    budgets = parse_budgets(yaml.safe_load(text))
    worker = stack.worker()
    emitter = SyncEmitter(broker.bootstrap, stack.topic)
    guard = Guard(redis_url, budgets, emitter, prefix=stack.prefix, cache_ttl=CACHE_TTL)
    calls: list[Call] = []
    lock = threading.Lock()
    refused: list[float] = []
    flag_seen: list[float] = []
    stop = threading.Event()
    try:
        stack.publish([message(usage(USER, cost=str(PREFILL)))])
        wait_until(lambda: keys.events(spend_user(USER)) == 1, 60, "the prefill",
                   check=worker.alive)
        probe = guard.admit(USER, "chat", MESSAGES)
        max_cost = cost(probe.input_tokens_local, 1000)
        guard.record(probe, provider="openai", input_tokens=0, output_tokens=0,
                     status="error")  # releases its reservation; counted at $0

        def watch_flag() -> None:
            while not stop.is_set() and not flag_seen:
                if keys.client.exists(stack.prefix + cutoff_user(USER)):
                    flag_seen.append(time.monotonic())
                time.sleep(0.005)

        def app(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                admitted = time.monotonic()
                try:
                    call = guard.admit(USER, "chat", MESSAGES)
                except BudgetExceeded:
                    with lock:
                        refused.append(time.monotonic())
                    return
                time.sleep(MODEL_SECONDS * rng.uniform(0.5, 1.5))  # the model answering
                out = rng.randint(call.max_tokens // 2, call.max_tokens)
                guard.record(call, provider="openai", input_tokens=call.input_tokens_local,
                             output_tokens=out, finish_reason="stop")
                with lock:
                    calls.append(Call(admitted, time.monotonic(),
                                      cost(call.input_tokens_local, out)))

        threads = [threading.Thread(target=watch_flag)] + [
            threading.Thread(target=app, args=(i,)) for i in range(THREADS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        wait_until(lambda: len(refused) == THREADS, 30, "every caller refused",
                   check=worker.alive)
        stop.set()
        for t in threads:
            t.join(10)
        assert emitter.flush(10)
        spend = wait_until(lambda: (s := keys.get(spend_user(USER))) and s["events"]
                           == 2 + len(calls) and s, 30, "every recorded call counted")
    finally:
        stop.set()
        emitter.close()
        guard.close()
        stack.close()
    assert worker.proc.returncode == 0, worker.output()

    recorded = PREFILL + sum((c.cost for c in calls), Decimal(0))
    assert Decimal(spend["spent_usd"]) == recorded  # nothing lost, nothing twice
    assert all(c.cost <= max_cost for c in calls)  # the guard's output cap held
    if reserve:
        overshoot = Decimal(spend["spent_usd"]) - BUDGET
        rate = len(calls) / (min(refused) - min(c.admitted for c in calls))
        print(f"\nwith reservations: budget ${BUDGET}, {len(calls)} calls admitted by "
              f"{THREADS} threads at {rate:.0f} calls/s, max cost per call ${max_cost}; "
              f"spent ${spend['spent_usd']}, overshoot ${overshoot} (bound $0), "
              f"${-overshoot} of the budget left unused; cutoff flag seen: {bool(flag_seen)}")
        assert overshoot <= 0
        return
    total = PREFILL
    crossed = None
    for c in sorted(calls, key=lambda c: c.recorded):
        total += c.cost
        if total >= BUDGET:
            crossed = c.recorded
            break
    assert crossed is not None and flag_seen, "the budget was never crossed"
    flag_latency = flag_seen[0] - crossed
    enforced = min(refused)
    in_flight = sum(1 for c in calls if c.admitted < crossed < c.recorded)
    admitted_after = sum(1 for c in calls if c.admitted >= crossed)
    rate = len(calls) / (enforced - started)
    overshoot = Decimal(spend["spent_usd"]) - BUDGET
    latency = flag_latency + CACHE_TTL
    bound = (in_flight + 1) * max_cost + Decimal(str(latency * rate)) * max_cost
    print(f"\nbudget ${BUDGET}, {len(calls)} calls admitted by {THREADS} threads at "
          f"{rate:.0f} calls/s, max cost per call ${max_cost}\n"
          f"crossing -> cutoff key in Redis {flag_latency:.3f}s, -> first refusal "
          f"{enforced - crossed:.3f}s (guard cache TTL {CACHE_TTL}s); in flight at the "
          f"crossing {in_flight}, admitted after it {admitted_after}\n"
          f"overshoot measured ${overshoot} ({overshoot / BUDGET:.0%} of the budget); bound "
          f"({in_flight} + 1) x ${max_cost} + {latency:.3f}s x {rate:.0f}/s x ${max_cost} "
          f"= ${bound:.4f}")
    assert 0 < flag_latency <= FLAG_WITHIN
    assert enforced - flag_seen[0] <= CACHE_TTL + 0.5  # guards obey the flag within the TTL
    assert Decimal(0) <= overshoot <= bound
