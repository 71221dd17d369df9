"""A running worker serves /metrics, /healthz and /livez, and the figures are the truth."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from spendstream.streams.topics import ensure_topics
from tests.helpers import WorkerProcess, metric, scrape, send_in_order, wait_until

pytestmark = pytest.mark.integration

BUDGETS = """\
users:
  default_tier: free
  tiers: {free: {usd: 100}}
features:
  chat: {period: month, usd: 1000}
  search: {period: month, usd: 5}
prices:
  gpt-4o: {input: 2.50, output: 10.00}
"""


def event(user: str, feature: str, **kw: object) -> bytes:
    return orjson.dumps({
        "schema": 1, "event_id": uuid.uuid4().hex,
        "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "user_id": user,
        "feature": feature, "model": "gpt-4o", "input_tokens": 4000, "output_tokens": 1000,
        **kw})  # $0.02 each at the override price


def test_metrics_and_health_of_a_counting_worker(broker, redis_server, uid, tmp_path) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BUDGETS)
    topic = f"t{uid}.usage"
    worker = WorkerProcess({
        "SPENDSTREAM_KAFKA_URL": broker.url, "SPENDSTREAM_REDIS_URL": redis_server.url,
        "SPENDSTREAM_BUDGETS": str(budgets), "SPENDSTREAM_TOPIC": topic,
        "SPENDSTREAM_REDIS_PREFIX": f"ss{uid}:", "SPENDSTREAM_APP_ID": f"app{uid}",
        "SPENDSTREAM_PARTITIONS": "2", "SPENDSTREAM_STATE_DIR": str(tmp_path / "state"),
    }, tmp_path / "worker.log")
    port = worker.metrics_port
    try:
        live = wait_until(lambda: scrape(port, "/livez")[0] == 200, 60, "/livez",
                          check=worker.alive)
        assert live
        health = wait_until(lambda: (h := scrape(port, "/healthz"))[0] == 200 and h, 60,
                            "/healthz ready", check=worker.alive)
        body = orjson.loads(health[1])
        assert body["ready"] is True and body["reason"] == "counting"
        assert sorted(body["partitions"]) == [0, 1]
        cli = subprocess.run([sys.executable, "-m", "spendstream", "health"], text=True,
                             capture_output=True, timeout=30, env=worker.env)
        assert cli.returncode == 0 and cli.stdout.startswith("ready: counting"), cli

        messages = [(f"u{i % 3}".encode(), event(f"u{i % 3}", "chat")) for i in range(12)]
        messages += [(b"u9", event("u9", "search")) for _ in range(5)]
        messages.insert(4, messages[3])  # a redelivery: counted once
        messages.append((b"u1", b"not json"))
        asyncio.run(ensure_topics(broker.bootstrap, [topic], 2))
        asyncio.run(send_in_order(broker.bootstrap, topic, messages))

        def counted() -> str | None:
            # The batch's timing is observed when the batch ends, after its events count.
            text = scrape(port)[1]
            done = (metric(text, "spendstream_events_counted_total") == 17
                    and (metric(text, "spendstream_batch_seconds_count") or 0) >= 1)
            return text if done else None

        text = wait_until(counted, 60, "17 events in /metrics", check=worker.alive)
        assert metric(text, "spendstream_duplicates_total") == 1
        assert metric(text, "spendstream_dead_letters_total") == 1
        assert metric(text, "spendstream_redis_up") == 1
        assert metric(text, "spendstream_ready") == 1
        assert metric(text, "spendstream_batch_seconds_count", ) >= 1

        def features() -> str | None:
            text = scrape(port)[1]
            return text if metric(text, "spendstream_feature_spend_usd",
                                  feature="search") == 0.1 else None

        text = wait_until(features, 30, "the feature spend in /metrics", check=worker.alive)
        assert Decimal(str(metric(text, "spendstream_feature_spend_usd", feature="chat"))) == (
            Decimal("0.24"))
        assert Decimal(str(metric(text, "spendstream_feature_remaining_usd",
                                  feature="search"))) == Decimal("4.9")
        lags = [metric(text, "spendstream_consumer_lag", partition=p) for p in ("0", "1")]
        assert all(lag is not None and lag >= 0 for lag in lags), lags
        wait_until(lambda: all(metric(scrape(port)[1], "spendstream_consumer_lag",
                                      partition=p) == 0 for p in ("0", "1")),
                   30, "lag back to 0", check=worker.alive)
    finally:
        code = worker.stop()
    assert code == 0, worker.output()
    assert scrape(port, "/livez")[0] == 0  # stopped with the worker
    cli = subprocess.run([sys.executable, "-m", "spendstream", "health"], text=True,
                         capture_output=True, timeout=30, env=worker.env)
    assert cli.returncode == 1 and "no worker answers" in cli.stdout, cli
