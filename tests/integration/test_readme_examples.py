"""The documented examples are the files a test runs: the app example and the budgets file;
the README opens with the two commands."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import orjson
import pytest
import redis

from spendstream.contract.keys import DEFAULT_PREFIX, cutoff_user
from spendstream.examples import EXAMPLE_BUDGETS
from spendstream.streams.topics import ensure_topics
from tests.docs import PAGES, ROOT, block_under, blocks
from tests.fake_llm import TEXT
from tests.fake_llm import fake_llm as fake_llm  # re-exported: the fixture
from tests.helpers import read_topic, record_events

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


STUB = '''
def call_model(*args):
    """The model call, stubbed: (prompt) in the app example, (model, messages, max_tokens)
    in the guard's."""
    return "hi!", {"prompt_tokens": 12, "completion_tokens": 3, "finish_reason": "stop"}
'''
DRIVE = '''
for _i in range(5):
    print({FN}(f"{USERS}-{_i}", "hello" if {TEXT} else [{"role": "user", "content": "hello"}]))
'''
ENTRY = re.compile(r"^def (\w+)\(user_id: str, (\w+)", re.M)
"""An example's entry point: a function of a user id and a prompt or messages."""


@pytest.mark.integration
@pytest.mark.slow
def test_every_python_example_runs_as_written_and_delivers(broker, redis_server, uid, tmp_path,
                                                           fake_llm):
    """Each python block of the README and docs/, in a fresh interpreter with only the model
    call stubbed (the wrapper block after the Guard block it builds on): it exits 0 and its
    events reach Kafka, although no example closes its emitter."""
    topic = f"t{uid}.usage"
    asyncio.run(ensure_topics(broker.bootstrap, [topic, "spendstream.usage"], 2))
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("features:\n  chat: {max_output_tokens: 50, model: gpt-4o-mini}\n"
                       "  summary: {max_output_tokens: 50, model: claude-3-5-haiku-latest}\n")
    env = {**os.environ, "SPENDSTREAM_KAFKA_URL": broker.url,
           "SPENDSTREAM_REDIS_URL": redis_server.url, "SPENDSTREAM_TOPIC": topic,
           "SPENDSTREAM_REDIS_PREFIX": f"rd{uid}:", "SPENDSTREAM_BUDGETS": str(budgets),
           "SPENDSTREAM_STATE_DIR": str(tmp_path / "state"),
           "OPENAI_BASE_URL": fake_llm.openai_url, "OPENAI_API_KEY": "test",
           "ANTHROPIC_BASE_URL": fake_llm.url, "ANTHROPIC_API_KEY": "test"}
    examples = list(dict.fromkeys(code for page in PAGES for code in blocks(page)))
    guard_block = block_under(ROOT / "docs" / "sdk.md", "## Guard")
    expected: dict[str, list[str]] = {topic: [], "spendstream.usage": []}
    for n, code in enumerate(examples):
        users = f"r{uid}-{n}"
        builds_on_guard = "guard." in code or "(guard)" in code or ", guard)" in code
        script = STUB + (guard_block if builds_on_guard and "Guard." not in code else "") + code
        entry = ENTRY.search(code)
        if entry:
            script += DRIVE.replace("{USERS}", users).replace("{FN}", entry[1]).replace(
                "{TEXT}", str(entry[2] != "messages"))
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120, env=env)
        assert out.returncode == 0, f"example {n}:\n{code}\n{out.stderr}"
        where = "spendstream.usage" if "SyncEmitter(os.environ" in code else topic
        if entry:
            assert len(out.stdout.splitlines()) == 5, out.stdout
            if "call_model(" in code:
                assert out.stdout == "hi!\n" * 5, out.stdout
            expected[where] += [f"{users}-{i}" for i in range(5)]
        else:
            assert TEXT in out.stdout
            expected[where] += ["acct-7"] * 3  # the wrapper example's three calls
    assert len(examples) >= 3

    for where, users in expected.items():
        records = asyncio.run(read_topic(broker.bootstrap, where, 10_000, timeout=10))
        mine = sorted(u for r in records for e in record_events(r)
                      if (u := orjson.loads(e)["user_id"]).startswith(f"r{uid}-") or
                      (u == "acct-7" and where == topic))
        assert mine == sorted(users), where
