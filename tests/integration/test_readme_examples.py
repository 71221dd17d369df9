"""The documented examples are the files a test runs: the app example and the budgets file;
the README opens with the two commands."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import orjson
import pytest
import redis

from spendstream.contract.keys import DEFAULT_PREFIX, cutoff_user
from spendstream.examples import EXAMPLE_BUDGETS
from spendstream.streams.topics import ensure_topics
from tests.docs import ROOT, block_under, blocks
from tests.helpers import read_topic

README = ROOT / "README.md"


def test_docs_show_the_app_example_and_the_budgets_file_verbatim():
    app = (ROOT / "examples" / "app.py").read_text()
    body = app.split("\n\n\ndef call_model")[0].split('"""\n\n', 1)[1]
    assert body.strip() == block_under(ROOT / "docs" / "sdk.md",
                                       "## Emit usage from an application").strip()
    budgets = block_under(ROOT / "docs" / "budgets.md", "# The budgets file", "yaml")
    assert EXAMPLE_BUDGETS.split("\n", 1)[1].strip() in budgets


def test_readme_opens_with_the_two_commands():
    first_blocks = blocks(README, "bash")[:2]
    assert "spendstream demo" in first_blocks[0]
    assert "pytest" in first_blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pytest" in ci


@pytest.mark.integration
def test_app_example_emits_and_respects_the_cutoff_flag(broker, redis_server, uid):
    topic = "spendstream.usage"  # the example uses the default topic
    asyncio.run(ensure_topics(broker.bootstrap, [topic], 2))
    r = redis.Redis.from_url(redis_server.url)
    r.set(DEFAULT_PREFIX + cutoff_user("acct-7"), b'{"scope": "user"}', ex=60)
    try:
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "app.py")], capture_output=True, text=True,
            timeout=60, env={**os.environ, "SPENDSTREAM_KAFKA_URL": broker.url,
                             "SPENDSTREAM_REDIS_URL": redis_server.url})
    finally:
        r.delete(DEFAULT_PREFIX + cutoff_user("acct-7"))
    assert out.returncode == 0, out.stderr
    assert "acct-1 -> echo:" in out.stdout
    assert "acct-7 -> You have used today's AI budget" in out.stdout
    events = [orjson.loads(m.value) for m in asyncio.run(read_topic(broker.bootstrap, topic, 2))]
    mine = [e for e in events if e["user_id"] in ("acct-1", "acct-2", "acct-7")]
    assert sorted(e["user_id"] for e in mine) == ["acct-1", "acct-2"]  # acct-7 was refused
    assert all(e["input_tokens"] == 12 and e["model"] == "gpt-4o" for e in mine)
