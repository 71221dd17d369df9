"""A worker killed with SIGKILL and restarted: totals stay exact (changelog + offsets + ids).

Part of the fault suite (``pytest -m fault``) as well as the integration tests.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
import redis

from spendstream.contract.keys import spend_feature, spend_global, spend_user
from tests.helpers import WorkerProcess, wait_until
from tests.integration.test_e2e_cli import publish

pytestmark = [pytest.mark.integration, pytest.mark.fault]

BUDGETS = """\
users: {tiers: {free: {usd: 1000}}}
features: {chat: {period: month, usd: 1000}}
"""


def batch(n: int, users: int) -> list[tuple[bytes, bytes]]:
    now = datetime.now(UTC).isoformat()
    out = []
    for i in range(n):
        user = f"user-{i % users}"
        out.append((user.encode(), orjson.dumps({
            "schema": 1, "event_id": uuid.uuid4().hex, "ts": now, "user_id": user,
            "feature": "chat", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 5,
            "cost_usd": "0.001"})))
    return out


@pytest.mark.parametrize("membership", [
    "dynamic", pytest.param("static", marks=pytest.mark.slow)])  # static: ~100 s under load
def test_sigkill_and_restart_counts_every_event_exactly_once(broker, redis_server, uid,
                                                             tmp_path, membership):
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BUDGETS)
    topic, prefix = f"t{uid}.usage", f"ss{uid}:"
    env = {"SPENDSTREAM_KAFKA_URL": broker.url, "SPENDSTREAM_REDIS_URL": redis_server.url,
           "SPENDSTREAM_BUDGETS": str(budgets), "SPENDSTREAM_TOPIC": topic,
           "SPENDSTREAM_REDIS_PREFIX": prefix, "SPENDSTREAM_APP_ID": f"app{uid}",
           "SPENDSTREAM_PARTITIONS": "3", "SPENDSTREAM_STATE_DIR": str(tmp_path / "state")}
    # Default session (10 s): the restart sends LeaveGroup for the dead member it finds in
    # the state directory, so the group does not wait for that session to end.
    if membership == "static":
        # A session far longer than the waits below: only static membership (the restart
        # is the same member) gives the partitions back in time.
        env |= {"SPENDSTREAM_SESSION_TIMEOUT": "85",
                "SPENDSTREAM_GROUP_INSTANCE_ID": f"worker-{uid}"}
    r = redis.Redis.from_url(redis_server.url)

    def global_day() -> dict:
        raw = r.get(prefix + spend_global("day"))
        return orjson.loads(raw) if raw else {}

    first, second = batch(300, 30), batch(300, 30)
    first += first[:25]  # producer retries: the same events published again
    worker = WorkerProcess(env, tmp_path / "worker-1.log")
    try:
        asyncio.run(publish(broker.bootstrap, topic, first, partitions=3))
        wait_until(lambda: global_day().get("events") == 300, 90, "the first 300 events",
                   check=worker.alive)
    finally:
        worker.proc.send_signal(signal.SIGKILL)  # no graceful shutdown, offsets uncommitted
        worker.stop()
    asyncio.run(publish(broker.bootstrap, topic, second, partitions=3))
    worker = WorkerProcess(env, tmp_path / "worker-2.log")
    try:
        wait_until(lambda: global_day().get("events", 0) >= 600,
                   90 if membership == "dynamic" else 60, "all 600 events", check=worker.alive)
        # Give a wrongly replayed batch its chance to show up before asserting exactness.
        wait_until(lambda: r.get(prefix + spend_feature("chat")) and orjson.loads(
            r.get(prefix + spend_feature("chat")))["events"] >= 600, 30, "feature totals")
    finally:
        assert worker.stop() == 0, worker.output()
    if membership == "dynamic":  # the killed worker's member left the group at the restart
        out = worker.log.read_text(errors="replace")
        assert "did not stop cleanly" in out and "removed it with LeaveGroup" in out, out
        assert not list((tmp_path / "state").glob("*.member.json"))  # a clean stop leaves none
    g = global_day()
    assert g["events"] == 600 and Decimal(g["spent_usd"]) == Decimal("0.600")
    f = orjson.loads(r.get(prefix + spend_feature("chat")))
    assert f["events"] == 600 and Decimal(f["spent_usd"]) == Decimal("0.600")
    for i in range(30):
        u = orjson.loads(r.get(prefix + spend_user(f"user-{i}")))
        assert u["events"] == 20, (i, u)
        assert u["spent_tokens"] == 20 * 15
