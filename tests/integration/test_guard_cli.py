"""The operator's kill switch end to end: the CLI writes the flag, a guard refuses within
its cache time, `enable` clears it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import redis

from spendstream.contract.keys import cutoff_feature
from spendstream.domain.budgets import parse_budgets
from spendstream.errors import FeatureDisabled
from spendstream.producers.guard import Guard

pytestmark = pytest.mark.integration

BUDGETS = parse_budgets({"features": {"chat": {"model": "gpt-4o"},
                                      "search": {"model": "gpt-4o-mini"}}})
HELLO = [{"role": "user", "content": "hello"}]
CACHE_TTL = 0.5


def cli(redis_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPENDSTREAM_REDIS_URL": redis_url, "SPENDSTREAM_REDIS_PREFIX": prefix}
    return subprocess.run([sys.executable, "-m", "spendstream", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def seconds_until(condition: Any, limit: float) -> float:
    """Poll ``condition`` until true; how long it took (fails after ``limit``)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit, "condition never became true"
        time.sleep(0.005)
    return time.monotonic() - start


def refused(guard: Guard) -> bool:
    try:
        guard.admit("acct-1", "chat", HELLO)
    except FeatureDisabled:
        return True
    return False


def test_disable_then_enable_through_the_cli(redis_url: str, uid: str) -> None:
    prefix = f"ks-{uid}:"
    guard = Guard(redis_url, BUDGETS, prefix=prefix, cache_ttl=CACHE_TTL)
    assert not refused(guard)  # the flags are now cached

    done = cli(redis_url, prefix, "disable", "chat", "--reason", "incident 42")
    assert done.returncode == 0, done.stderr
    written = time.monotonic()
    seconds_until(lambda: refused(guard), CACHE_TTL + 1.0)
    assert time.monotonic() - written <= CACHE_TTL + 0.2  # within the cache time
    with pytest.raises(FeatureDisabled) as e:
        guard.admit("acct-1", "chat", HELLO)
    assert e.value.reason == "incident 42" and e.value.resets_at is None
    assert guard.admit("acct-1", "search", HELLO)  # other features are untouched

    value = json.loads(redis.Redis.from_url(redis_url).get(prefix + cutoff_feature("chat")) or "")
    assert set(value) == {"scope", "id", "reason", "level", "spent", "budget", "unit",
                          "window_start", "window_end"}
    assert (value["scope"], value["id"], value["level"]) == ("feature", "chat", "cutoff")

    listed = cli(redis_url, prefix, "flags")
    assert prefix + cutoff_feature("chat") in listed.stdout and "incident 42" in listed.stdout

    done = cli(redis_url, prefix, "enable", "chat")
    assert done.returncode == 0 and "enabled chat" in done.stdout
    seconds_until(lambda: not refused(guard), CACHE_TTL + 1.0)
    assert "no active flags" in cli(redis_url, prefix, "flags").stdout
    assert "was not disabled" in cli(redis_url, prefix, "enable", "chat").stdout


def test_disable_with_ttl_expires_on_its_own(redis_url: str, uid: str) -> None:
    prefix = f"ks-{uid}:"
    r = redis.Redis.from_url(redis_url)
    done = cli(redis_url, prefix, "disable", "chat", "--ttl", "2m")
    assert done.returncode == 0, done.stderr
    assert 100 < r.ttl(prefix + cutoff_feature("chat")) <= 120
    guard = Guard(redis_url, BUDGETS, prefix=prefix, cache_ttl=0)
    with pytest.raises(FeatureDisabled) as e:
        guard.admit("acct-1", "chat", HELLO)
    assert e.value.resets_at is not None
    assert "UTC" in str(e.value)


def test_disable_rejects_a_bad_ttl_and_an_unreachable_redis(uid: str) -> None:
    from spendstream.embedded import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    bad = cli(url, "x:", "disable", "chat", "--ttl", "soon")
    assert bad.returncode == 2 and "duration" in bad.stderr
    down = cli(url, "x:", "disable", "chat")
    assert down.returncode == 2 and "Redis unreachable" in down.stderr
