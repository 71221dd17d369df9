"""Odd inputs at a running worker (issue 12): each case is published to ``spendstream
worker`` as raw JSON and judged by what the worker leaves in Redis and the DLQ."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import genai_prices
import orjson
import pytest
import yaml

from spendstream.contract import dead_letter
from spendstream.contract.decode import MAX_RECORD_EVENTS
from spendstream.domain.budgets import parse_budgets
from spendstream.embedded import EmbeddedRedis
from spendstream.producers.guard import Guard
from tests.fault.faultkit import Keys, Ledger, Stack, message, usage
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


def test_two_app_ids_on_one_topic_keep_their_own_totals(broker, redis_url, uid, tmp_path):
    """Production and a replay with double prices read one usage topic, each with its own
    app id and key prefix: each one's user, feature and global totals are its own."""
    prices = {"a": ("2.50", "10.00"), "b": ("5.00", "20.00")}
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, "", partitions=2)
    stack.create_topics()
    workers = {}
    for name, (inp, out) in prices.items():
        path = tmp_path / f"budgets-{name}.yaml"
        path.write_text(f"features:\n  chat: {{period: month, usd: 1000}}\n"
                        f"prices:\n  gpt-4o: {{input: {inp}, output: {out}}}\n")
        workers[name] = stack.worker(name, SPENDSTREAM_APP_ID=f"app{uid}{name}",
                                     SPENDSTREAM_REDIS_PREFIX=f"ss{uid}{name}:",
                                     SPENDSTREAM_BUDGETS=str(path))
    users = [f"acct-{i}" for i in range(12)]
    events = [usage(u, cost=None, input_tokens=1000, output_tokens=100)
              for u in users for _ in range(3)]
    try:
        stack.publish(message(e) for e in events)
        for name, (inp, out) in prices.items():
            keys = Keys(redis_url, f"ss{uid}{name}:")
            each = (Decimal(1000) * Decimal(inp) + Decimal(100) * Decimal(out)) / 1_000_000
            want = each * len(events)
            day = wait_until(lambda k=keys: (v := k.get("spend:global:day")) and v["events"]
                             >= len(events) and v, 60, f"app {name}'s global day",
                             check=workers[name].alive)
            assert (day["events"], Decimal(day["spent_usd"])) == (len(events), want), name
            feature = wait_until(lambda k=keys: (v := k.get("spend:feature:chat")) and
                                 v["events"] >= len(events) and v, 30, "the feature")
            assert (feature["events"], Decimal(feature["spent_usd"])) == (len(events), want)
            for u in users:
                spend = keys.get(f"spend:user:{u}")
                assert spend is not None and Decimal(spend["spent_usd"]) == each * 3, (name, u)
    finally:
        stack.close()
    assert all(w.proc.returncode == 0 for w in workers.values())


PLAIN_BUDGETS = """\
users:
  tiers: {free: {usd: 1000}}
"""


def test_cache_writes_are_priced_at_the_cache_write_rate(broker, redis_url, uid, tmp_path):
    """100,000 cache-write tokens on claude-sonnet-4-5, priced by the worker: genai-prices'
    figure ($0.375), not the input rate's ($0.30)."""
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, PLAIN_BUDGETS)
    stack.create_topics()
    keys = stack.redis()
    want = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=100_000, cache_write_tokens=100_000, output_tokens=0),
        "claude-sonnet-4-5", provider_id="anthropic").total_price
    event = usage("acct-c", cost=None, model="claude-sonnet-4-5", provider="anthropic",
                  input_tokens=100_000, cache_write_input_tokens=100_000, output_tokens=0)
    worker = stack.worker()
    try:
        stack.publish([message(event)])
        spend = wait_until(lambda: keys.get("spend:user:acct-c"), 60, "the user's spend",
                           check=worker.alive)
        assert Decimal(spend["spent_usd"]) == want == Decimal("0.375")
    finally:
        stack.close()
    assert worker.proc.returncode == 0, worker.output()


def test_an_event_without_an_id_counts_once_when_its_record_is_read_again(
        broker, redis_url, uid, tmp_path):
    """Events from a producer that sends no ``event_id`` take their record's coordinates
    as their id: killed right after counting them (offsets not yet committed: faust commits
    every 2.8 s), the next worker reads the records again and counts them once."""
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, PLAIN_BUDGETS,
                  partitions=2, extra={"SPENDSTREAM_SESSION_TIMEOUT": "3"})
    stack.create_topics()
    keys = stack.redis()
    n = 200
    anonymous = [{k: v for k, v in usage("acct-n", cost="0.01").items() if k != "event_id"}
                 for _ in range(n)]
    first = stack.worker("w")
    try:
        wait_until(first.ready, 60, "the worker up", check=first.alive)
        stack.publish(message(e) for e in anonymous)
        wait_until(lambda: keys.events("spend:user:acct-n") > 0, 60, "the first counted",
                   interval=0.005, check=first.alive)
        first.kill()
        second = stack.worker("w")
        # One more event of the user, behind the others on its partition: once it is
        # counted, everything read again before it has been counted too.
        stack.publish([message(usage("acct-n", cost="0.01"))])
        spend = wait_until(lambda: (v := keys.get("spend:user:acct-n")) and v["events"] > n
                           and v, 90, "the last event", check=second.alive)
        status = second.status()
        print(f"the restarted worker read {status['duplicates']} events again")
        assert spend["events"] == n + 1, status
        assert Decimal(spend["spent_usd"]) == Decimal("0.01") * (n + 1)
    finally:
        stack.close()


def test_contract_checks_at_the_worker(broker, redis_url, uid, tmp_path):
    """Cached input above the input, a second ``user_id`` in one object and ``cost_usd`` as
    a JSON number go to the DLQ; two users' events that share an ``event_id`` both count."""
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, PLAIN_BUDGETS)
    stack.create_topics()
    keys = stack.redis()
    over = usage("acct-v", input_tokens=100, cached_input_tokens=101)
    number = usage("acct-v", cost=None, cost_usd=0.5)
    twice = orjson.dumps(usage("acct-v"))[:-1] + b',"user_id":"acct-w"}'
    shared = [usage(u, event_id="same-id", cost="0.01") for u in ("acct-x", "acct-y")]
    worker = stack.worker()
    try:
        stack.publish([message(over), message(number), (b"acct-w", twice),
                       *(message(e) for e in shared)])
        wait_until(lambda: (s := worker.status())["dead_letters"] == 3 and s["events"] == 2,
                   60, "three dead letters, two events", check=worker.alive)
        why = sorted(reasons(stack.read(".dlq", 3)))
        assert len(why) == 3
        assert any("exceed input_tokens" in r for r in why), why
        assert any("not a JSON number" in r for r in why), why
        assert any("user_id: repeated key" in r for r in why), why
        for user in ("acct-x", "acct-y"):
            spend = wait_until(lambda u=user: keys.get(f"spend:user:{u}"), 30, user)
            assert spend["events"] == 1
        assert keys.get("spend:user:acct-w") is None and keys.get("spend:user:acct-v") is None
    finally:
        stack.close()
    assert worker.proc.returncode == 0, worker.output()


def test_spend_keys_come_back_after_redis_restarts_empty(broker, uid, tmp_path):
    """Ten users spend $12.00, then Redis restarts empty while the worker is idle: every
    user, feature and global spend key comes back, with no new event."""
    server = EmbeddedRedis(workdir=tmp_path)
    server.start()
    try:
        stack = Stack(broker.bootstrap, broker.url, server.url, uid, tmp_path, PLAIN_BUDGETS,
                      partitions=2)
        stack.create_topics()
        keys = stack.redis()
        ledger = Ledger()
        events = [usage(f"acct-{i}", cost="1.20") for i in range(10)]
        for e in events:
            ledger.add(e)
        worker = stack.worker()
        stack.publish(message(e) for e in events)
        assert ledger.settle(keys, 60, check=worker.alive) == []
        server.stop()
        server.start()  # same port, no persistence: empty
        assert keys.get("spend:user:acct-0") is None
        wrong = ledger.settle(keys, 30, check=worker.alive)
        assert wrong == [], wrong
        assert sum(Decimal(keys.get(f"spend:user:acct-{i}")["spent_usd"])
                   for i in range(10)) == Decimal("12.00")
        stack.close()
        assert worker.proc.returncode == 0, worker.output()
    finally:
        server.stop()


def test_records_too_big_to_produce_again_go_to_the_dlq_cut_and_their_neighbours_count(
        broker, redis_url, uid, tmp_path):
    """A 2 MB event and a packed record of 10,001 events (2.4 MB) are over the worker's
    limits and over the 1 MB a producer sends by default: each goes to the DLQ cut to
    1,000,000 bytes, with its size and SHA-256, and the events around them count exactly. (Before,
    the DLQ send failed, the record was counted as dead-lettered, and its offset was
    committed with it in neither place.)"""
    stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, PLAIN_BUDGETS)
    stack.create_topics()
    keys = stack.redis()
    ledger = Ledger()
    big = usage("acct-big", pad="x" * 2_000_000)
    many = [usage("acct-many") for _ in range(MAX_RECORD_EVENTS + 1)]
    oversize = [message(big), (b"acct-many", orjson.dumps(many))]
    good = [usage(f"acct-{i}", cost="0.25") for i in range(6)]
    for e in good:
        ledger.add(e)
    worker = stack.worker()
    try:
        stack.publish([message(e) for e in good[:3]] + oversize
                      + [message(e) for e in good[3:]])
        assert ledger.settle(keys, 60, check=worker.alive) == []
        wait_until(lambda: worker.status()["dead_letters"] == 2, 30, "two dead letters",
                   check=worker.alive)
        dead = stack.read(".dlq", 2)
    finally:
        stack.close()
    assert worker.proc.returncode == 0, worker.output()
    assert len(dead) == 2
    dead.sort(key=lambda r: r.key != b"acct-big")  # two keys: two DLQ partitions, any order
    for record, (key, value) in zip(dead, oversize, strict=True):
        headers = dict(record.headers)
        assert record.key == key and value.startswith(record.value)
        assert len(record.value) == dead_letter.MAX_VALUE_BYTES
        assert headers[dead_letter.ORIGINAL_BYTES] == str(len(value)).encode()
        assert headers[dead_letter.ORIGINAL_SHA256] == hashlib.sha256(value).hexdigest().encode()
    why = reasons(dead)
    assert "over the 65536 limit" in why[0] and "over the 1048576 limit" in why[1], why
