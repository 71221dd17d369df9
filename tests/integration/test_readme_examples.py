"""The README's examples are the files a test runs: the app example and the budgets file."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis

from spendstream.examples import EXAMPLE_BUDGETS
from spendstream.streams.topics import ensure_topics
from tests.fake_llm import TEXT
from tests.fake_llm import fake_llm as fake_llm  # re-exported: the fixture
from tests.helpers import read_topic, record_events

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def code_blocks() -> list[str]:
    return re.findall(r"```(?:python|yaml|bash)\n(.*?)```", README, flags=re.S)


def test_readme_shows_the_app_example_and_the_budgets_file_verbatim():
    app = (ROOT / "examples" / "app.py").read_text()
    body = app.split("\n\n\ndef call_model")[0].split('"""\n\n', 1)[1]
    assert any(body.strip() in block for block in code_blocks())
    assert any(EXAMPLE_BUDGETS.split("\n", 1)[1].strip() in block for block in code_blocks())


def test_readme_opens_with_the_two_commands():
    first_blocks = code_blocks()[:2]
    assert "spendstream demo" in first_blocks[0]
    assert "pytest" in first_blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pytest" in ci


@pytest.mark.integration
def test_app_example_emits_and_respects_the_cutoff_flag(broker, redis_server, uid):
    topic = "spendstream.usage"  # the example uses the default topic
    asyncio.run(ensure_topics(broker.bootstrap, [topic], 2))
    r = redis.Redis.from_url(redis_server.url)
    r.set("spendstream:cutoff:user:acct-7", b'{"scope": "user"}', ex=60)
    try:
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "app.py")], capture_output=True, text=True,
            timeout=60, env={**os.environ, "SPENDSTREAM_KAFKA_URL": broker.url,
                             "SPENDSTREAM_REDIS_URL": redis_server.url})
    finally:
        r.delete("spendstream:cutoff:user:acct-7")
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
import inspect as _inspect
_prompt = "prompt" in _inspect.signature(answer).parameters
for _i in range(5):
    print(answer(f"{USERS}-{_i}", "hello" if _prompt else [{"role": "user", "content": "hello"}]))
'''


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.integration
def test_every_python_snippet_runs_as_written_and_delivers(broker, redis_server, uid, tmp_path,
                                                           fake_llm):
    """Each python block of the README, in a fresh interpreter with only the model call
    stubbed (the wrapper block after the Guard block it builds on): it exits 0 and its
    events reach Kafka, although no snippet closes its emitter."""
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
    blocks = python_blocks()
    guard_block = next(b for b in blocks if "Guard.from_settings" in b)
    seen: list[str] = []
    for n, block in enumerate(blocks):
        users = f"r{uid}-{n}"
        script = STUB + (guard_block if "wrap_openai" in block else "") + block
        if "def answer" in block:
            script += DRIVE.replace("{USERS}", users)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120, env=env)
        assert out.returncode == 0, f"README python block {n}:\n{block}\n{out.stderr}"
        if "def answer" in block:
            assert out.stdout == "hi!\n" * 5, out.stdout
        else:
            assert TEXT in out.stdout
        seen.append(block)
    assert len(seen) == len(blocks) == 3

    def users_on(t: str, n: int) -> list[str]:
        records = asyncio.run(read_topic(broker.bootstrap, t, n, timeout=15))
        return [orjson.loads(e)["user_id"] for r in records for e in record_events(r)]

    app_users = [u for u in users_on("spendstream.usage", 10_000) if u.startswith(f"r{uid}-0")]
    assert sorted(app_users) == [f"r{uid}-0-{i}" for i in range(5)]
    mine = users_on(topic, 8)
    assert sorted(u for u in mine if u.startswith(f"r{uid}-1")) == [
        f"r{uid}-1-{i}" for i in range(5)]
    assert mine.count("acct-7") == 3  # the wrapper block's three calls
