"""End to end through the CLI: raw JSON in, cutoff key, one Slack message, DLQ, dedup out.

Events are published as raw JSON with a plain Kafka producer (not the SDK), the way an
application in another language would.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis

from spendstream.contract.keys import cutoff_user, spend_user
from spendstream.settings import load_settings
from spendstream.streams.topics import ensure_topics
from tests.helpers import WorkerProcess, read_topic, send_in_order, wait_until
from tests.slack_fake import SlackFake

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

BUDGETS = """\
users:
  default_tier: free
  tiers: {free: {usd: 0.13}}
features:
  chat: {period: month, usd: 1000}
prices:
  gpt-4o: {input: 2.50, output: 10.00}
"""


def event(user: str, **kw: object) -> dict[str, object]:
    e = {"schema": 1, "event_id": uuid.uuid4().hex,
         "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "user_id": user,
         "feature": "chat", "model": "gpt-4o", "provider": "openai", "input_tokens": 4000,
         "output_tokens": 1000, "cached_input_tokens": 0, "status": "ok",
         "finish_reason": "stop"}  # $0.02 at the override price
    e.update(kw)
    return e


GARBAGE = [
    b"not json at all",
    orjson.dumps(event("acct-1", schema=2)),
    orjson.dumps(event("acct-1", input_tokens=-5)),
    orjson.dumps(event("acct-1", output_tokens="300")),
]


async def publish(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]],
                  partitions: int = 2) -> None:
    """Create the topic explicitly (as the README tells apps to), then send in order."""
    await ensure_topics(bootstrap, [topic], partitions)
    await send_in_order(bootstrap, topic, messages)


def test_raw_events_to_cutoff_flag_slack_dlq_and_dedup(broker, redis_server, uid, tmp_path):
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BUDGETS)
    topic, prefix = f"t{uid}.usage", f"ss{uid}:"
    with SlackFake() as slack:
        worker = WorkerProcess({
            "SPENDSTREAM_KAFKA_URL": broker.url, "SPENDSTREAM_REDIS_URL": redis_server.url,
            "SPENDSTREAM_BUDGETS": str(budgets), "SPENDSTREAM_TOPIC": topic,
            "SPENDSTREAM_REDIS_PREFIX": prefix, "SPENDSTREAM_APP_ID": f"app{uid}",
            "SPENDSTREAM_PARTITIONS": "2", "SLACK_WEBHOOK_URL": slack.webhook_url,
        }, tmp_path / "worker.log")
        try:
            events = [event("acct-7") for _ in range(7)]  # 7 x $0.02 = $0.14 > $0.13
            messages = [(b"acct-7", orjson.dumps(e)) for e in events]
            messages.insert(3, messages[2])  # a producer retry: same event_id twice
            messages += [(b"acct-1", g) for g in GARBAGE]
            asyncio.run(publish(broker.bootstrap, topic, messages))
            # A stray message on the internal rollup topic must not crash-loop stage two.
            rollup = load_settings(topic=topic, app_id=f"app{uid}").rollup_topic
            asyncio.run(publish(broker.bootstrap, rollup, [(b"chat", b"junk")]))

            r = redis.Redis.from_url(redis_server.url)
            cutoff = wait_until(lambda: r.get(prefix + cutoff_user("acct-7")), 90,
                                "the cutoff flag", check=worker.alive)
            flag = orjson.loads(cutoff)
            assert flag["scope"] == "user" and flag["id"] == "acct-7"
            assert flag["budget"] == "0.13" and flag["unit"] == "usd"
            ttl = r.ttl(prefix + cutoff_user("acct-7"))
            now = datetime.now(UTC)
            to_midnight = (now.replace(hour=0, minute=0, second=0, microsecond=0)
                           + timedelta(days=1) - now).total_seconds()
            assert to_midnight - 60 <= ttl <= to_midnight + 1

            spend = wait_until(
                lambda: (s := r.get(prefix + spend_user("acct-7"))) and
                orjson.loads(s)["events"] == 7 and orjson.loads(s), 30, "all 7 events counted")
            assert spend["spent_usd"] == "0.14"  # the duplicate was counted once

            dead = asyncio.run(read_topic(broker.bootstrap, f"{topic}.dlq", len(GARBAGE) + 1))
            assert sorted(m.value for m in dead) == sorted([*GARBAGE, b"junk"])  # nothing lost
            reasons = {m.value: dict(m.headers)["x-spendstream-reason"].decode() for m in dead}
            assert "not JSON" in reasons[GARBAGE[0]]
            assert "unknown schema 2" in reasons[GARBAGE[1]]
            assert "input_tokens" in reasons[GARBAGE[2]]
            assert "output_tokens" in reasons[GARBAGE[3]]
            assert "malformed rollup message" in reasons[b"junk"]

            asyncio.run(slack.wait_for(1, timeout=30))
        finally:
            code = worker.stop()
        assert code == 0, worker.output()
        posts = slack.requests
        assert len(posts) == 1, [p.json for p in posts]
        text = orjson.dumps(posts[0].json).decode()
        assert "acct-7" in text and "0.13" in text
        alerts = asyncio.run(read_topic(broker.bootstrap, f"{topic}.alerts", 1))
        assert [orjson.loads(a.value)["subject"] for a in alerts] == ["acct-7"]
