"""The response cache's hit rate, measured end to end: the real guard (cache on) and
wrapper answer from Redis, the real emitter publishes every call (hits marked
``cache_hit``), a real worker counts them on ``/metrics`` and in the feature's live spend
key and writes the ledger on a real PostgreSQL, and the ledger's report, the dashboard's
feature view and the weekly digest read the hit rate back: the digest flags the feature
whose cache answers under 20% of its calls and not the one above."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import psycopg
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from fake_llm import FakeLLM
from fake_llm import fake_llm as fake_llm  # re-exported so pytest finds the fixture

from spendstream.contract.keys import spend_feature
from spendstream.dashboard.server import build_app
from spendstream.domain.budgets import parse_budgets
from spendstream.embedded import EmbeddedBroker
from spendstream.producers import SyncEmitter
from spendstream.producers.guard import Guard
from spendstream.producers.wrappers import wrap_openai
from spendstream.settings import load_settings
from tests.fault.faultkit import Stack
from tests.helpers import metric, scrape, wait_until

pytestmark = pytest.mark.integration

BUDGETS = """\
users:
  tiers: {free: {usd: 5}}
features:
  faq: {usd: 100, max_output_tokens: 50, model: gpt-4o-mini, cache: {ttl: 1h}}
  lookup: {usd: 100, max_output_tokens: 50, model: gpt-4o-mini, cache: {ttl: 1h}}
  chat: {usd: 100, max_output_tokens: 50, model: gpt-4o-mini}
prices:
  gpt-4o-mini: {input: 0.15, output: 0.60}
"""
CALLS = {  # feature: the prompts asked, in order (a repeated prompt is a cache hit)
    "faq": [f"question {i}" for i in range(5)] * 2,  # 10 calls, 5 hits: 50%
    "lookup": [f"item {i}" for i in range(9)] + ["item 0"],  # 10 calls, 1 hit: 10%
    "chat": ["hello"] * 3,  # no cache: 3 calls, never a hit
}
EXPECTED = {"faq": (10, 5), "lookup": (10, 1), "chat": (3, 0)}


@pytest.fixture
def stack(broker: EmbeddedBroker, redis_url: str, uid: str, tmp_path: Path, database_url: str
          ) -> Iterator[Stack]:
    s = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp_path, BUDGETS, partitions=1,
              extra={"SPENDSTREAM_DATABASE_URL": database_url})
    s.create_topics()
    yield s
    s.close()


def ledger_rows(url: str) -> int:
    with psycopg.connect(url, connect_timeout=2) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM cost_logs").fetchone()[0])
        except psycopg.errors.UndefinedTable:
            return 0


def cli(stack: Stack, database_url: str, *args: str) -> str:
    env = {**os.environ, **stack.env("cli"), "SPENDSTREAM_DATABASE_URL": database_url}
    out = subprocess.run([sys.executable, "-m", "spendstream", *args], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def feature_view(stack: Stack, database_url: str) -> dict[str, dict[str, Any]]:
    env = stack.env("dash")
    settings = load_settings(kafka_url=env["SPENDSTREAM_KAFKA_URL"],
                             redis_url=env["SPENDSTREAM_REDIS_URL"], database_url=database_url,
                             topic=env["SPENDSTREAM_TOPIC"],
                             redis_prefix=env["SPENDSTREAM_REDIS_PREFIX"])
    client = TestClient(TestServer(build_app(settings, parse_budgets(yaml.safe_load(BUDGETS)))))
    await client.start_server()
    try:
        body = await (await client.get("/api/features")).json()
    finally:
        await client.close()
    return {row["feature"]: row for row in body["features"]}


async def test_hit_rate_per_feature_in_worker_ledger_dashboard_and_digest(
        stack: Stack, database_url: str, fake_llm: FakeLLM) -> None:
    worker = stack.worker()
    emitter = SyncEmitter(stack.bootstrap, stack.topic)
    guard = Guard(stack.redis_url, parse_budgets(yaml.safe_load(BUDGETS)), emitter,
                  prefix=stack.prefix, cache_ttl=0.0)
    client = wrap_openai(openai.OpenAI(api_key="t", base_url=fake_llm.openai_url,
                                       max_retries=0), guard)
    try:
        for feature, prompts in CALLS.items():
            for prompt in prompts:
                client.chat.completions.create(
                    messages=[{"role": "user", "content": prompt}], user_id="acct-1",
                    feature=feature)
        assert emitter.flush(10)
    finally:
        emitter.close()
        guard.close()
    total = sum(n for n, _ in EXPECTED.values())
    hits = sum(k for _, k in EXPECTED.values())
    assert len(fake_llm.requests) == total - hits  # a hit never reaches the provider

    # The worker: calls and hits per feature on /metrics, and in the live spend key.
    text = wait_until(lambda: (m := scrape(worker.metrics_port)[1])
                      and metric(m, "spendstream_calls_total", feature="chat") == 3 and m,
                      60, "the worker counted every call", check=worker.alive)
    for feature, (calls, hit) in EXPECTED.items():
        assert metric(text, "spendstream_calls_total", feature=feature) == calls
        assert metric(text, "spendstream_cache_hits_total", feature=feature) == hit
    keys = stack.redis()
    live = wait_until(lambda: (v := keys.get(spend_feature("lookup"))) and v["events"] == 10
                      and v, 30, "lookup's live spend key", check=worker.alive)
    assert (live["cache_hits"], live["cache_hit_rate"]) == (1, 0.1)
    assert keys.get(spend_feature("faq"))["cache_hit_rate"] == 0.5

    # The ledger: every call once, hits free; the report's hit rate is k/N per feature.
    wait_until(lambda: ledger_rows(database_url) == total, 60, f"{total} ledger rows",
               check=worker.alive)
    report = orjson.loads(cli(stack, database_url, "report", "--format", "json"))
    got = {r["feature"]: (r["calls"], r["cache_hits"], r["hit_rate"])
           for r in report["top_features"]}
    assert got == {"faq": (10, 5, "0.5"), "lookup": (10, 1, "0.1"), "chat": (3, 0, "0")}

    # The dashboard's feature view: the month's hit rate of every feature.
    rows = await feature_view(stack, database_url)
    assert {f: (r["cache_on"], r["month_calls"], r["month_cache_hits"],
                r["month_cache_hit_rate"]) for f, r in rows.items()} == {
        "faq": (True, 10, 5, "0.5"), "lookup": (True, 10, 1, "0.1"),
        "chat": (False, 3, 0, "0")}

    # The weekly digest flags lookup (10%), not faq (50%) nor chat (no cache).
    digest = cli(stack, database_url, "report", "--digest")
    assert "; cache hit rate 50% (5 of 10 calls)" in digest
    assert "caching not helping (cache hit rate under 20% this week" in digest, digest
    flagged = digest.split("caching not helping")[1].split("\n\n")[0]
    assert "- lookup: 10% of 10 calls answered from the cache" in flagged
    assert "faq" not in flagged and "chat" not in flagged
