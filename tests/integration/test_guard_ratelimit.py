"""The per-user rate limit holds across processes: two replicas share one limit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.integration

LIMIT = 25
ATTEMPTS = 40

CHILD = textwrap.dedent("""
    import json, os, sys, time
    from spendstream.errors import Throttled
    from spendstream.domain.budgets import parse_budgets
    from spendstream.producers.guard import Guard

    url, prefix, limit, attempts, go = sys.argv[1:6]
    budgets = parse_budgets({"features": {"chat": {"model": "gpt-4o"}}})
    guard = Guard(url, budgets, prefix=prefix, rate_limit_per_minute=int(limit))
    guard.admit("warmup", "chat", [{"role": "user", "content": "x"}])
    print("ready", flush=True)
    while not os.path.exists(go):  # start both hammers at once
        time.sleep(0.001)
    admitted = throttled = 0
    for _ in range(int(attempts)):
        try:
            guard.admit("acct-1", "chat", [{"role": "user", "content": "hi"}])
            admitted += 1
        except Throttled:
            throttled += 1
    print(json.dumps({"admitted": admitted, "throttled": throttled,
                      "failed_open": guard.stats.failed_open}), flush=True)
""")


def test_two_processes_admit_exactly_the_limit(redis_url: str, uid: str, tmp_path: object
                                               ) -> None:
    go = f"{tmp_path}/go"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, redis_url, f"rl-{uid}:", str(LIMIT),
                               str(ATTEMPTS), go], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        open(go, "w").close()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert sum(r["admitted"] for r in results) == LIMIT
    assert sum(r["throttled"] for r in results) == 2 * ATTEMPTS - LIMIT
    assert all(r["failed_open"] == 0 for r in results)
    # Every attempt was either admitted or throttled: no other outcome.
    assert all(r["admitted"] + r["throttled"] == ATTEMPTS for r in results)


def test_sliding_window_frees_slots_as_requests_age(redis_url: str, uid: str) -> None:
    import redis

    from spendstream.contract.keys import rate_user
    from spendstream.producers.ratelimit import SCRIPT, RateDecision

    r = redis.Redis.from_url(redis_url)
    script = r.register_script(SCRIPT)
    key = f"sw-{uid}:" + rate_user("u")

    def take(window_us: int) -> RateDecision:
        # ARGV: window, a unique member, then (limit, weight) per key.
        return RateDecision.from_reply(script(keys=[key],
                                              args=[window_us, time.time_ns(), 2, 1]))

    window = 300_000  # 0.3 s
    assert take(window).admitted and take(window).admitted
    refused = take(window)
    assert not refused.admitted and refused.used == 2 and refused.index == 0
    assert 0 < r.pttl(key) <= 300
    deadline = time.monotonic() + 3
    while not take(window).admitted:  # a slot frees once the oldest entry is 0.3 s old
        assert time.monotonic() < deadline, "the window never slid"
        time.sleep(0.02)
