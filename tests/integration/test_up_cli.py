"""`spendstream up`: an app can use the stack it prints, and SIGTERM leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from decimal import Decimal

import orjson
import psycopg
import pytest
import redis

from spendstream.contract.keys import spend_user
from tests.helpers import wait_until
from tests.integration.test_e2e_cli import event, publish

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_up_serves_apps_and_stops_cleanly_on_sigterm(redis_server, tmp_path):
    prefix = f"up{uuid.uuid4().hex[:6]}:"
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "spendstream", "up"], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "SPENDSTREAM_REDIS_URL": redis_server.url,
             "SPENDSTREAM_REDIS_PREFIX": prefix})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("Ctrl-C to stop" in line for line in lines), 60, "up to be up")
        hint = next(line for line in lines if "export SPENDSTREAM_KAFKA_URL=" in line)
        port = int(re.search(r"kafka://127\.0\.0\.1:(\d+)", hint).group(1))
        assert "no budgets.yaml: using the example budgets" in "".join(lines)
        asyncio.run(publish(f"127.0.0.1:{port}", "spendstream.usage",
                            [(b"acct-1", orjson.dumps(event("acct-1", cost_usd="0.02")))],
                            partitions=4))
        r = redis.Redis.from_url(redis_server.url)
        spend = wait_until(lambda: r.get(prefix + spend_user("acct-1")), 60, "the event counted")
        assert orjson.loads(spend)["events"] == 1
        # The embedded PostgreSQL's URL is printed, and the worker writes the ledger there.
        database = re.search(r"SPENDSTREAM_DATABASE_URL=(\S+)", hint).group(1)
        pg_port = int(re.search(r"127\.0\.0\.1:(\d+)/", database).group(1))
        assert wait_until(lambda: ledger_rows(database), 60, "the event in the ledger") == [
            ("acct-1", Decimal("0.02"), "event")]
    finally:
        proc.terminate()
        code = proc.wait(60)
        reader.join(5)
    assert code == 0, "".join(lines)
    assert lines[-1].strip() == "spendstream | stopped"
    with socket.socket() as s:  # the embedded broker is gone with `up`
        assert s.connect_ex(("127.0.0.1", port)) != 0
    with socket.socket() as s:  # and so is the embedded PostgreSQL
        assert s.connect_ex(("127.0.0.1", pg_port)) != 0


def ledger_rows(url: str) -> list[tuple[object, ...]]:
    """(user, cost, price source) of every ledger row; [] until the ledger exists."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return conn.execute("SELECT user_id, cost_usd, price_source FROM cost_logs"
                                ).fetchall()
    except psycopg.Error:
        return []
