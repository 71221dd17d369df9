"""The README's Guard example, run as written against a real Redis."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import redis

from spendstream.contract.keys import cutoff_user
from spendstream.embedded import free_port

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def guard_example() -> str:
    section = README.read_text().split("\n## Guard\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Guard section has no python example"
    return match.group(1)


def test_readme_guard_example(redis_url: str, uid: str, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("features:\n  chat: {max_output_tokens: 50, model: gpt-4o}\n")
    monkeypatch.setenv("SPENDSTREAM_REDIS_URL", redis_url)
    monkeypatch.setenv("SPENDSTREAM_REDIS_PREFIX", f"rd-{uid}:")
    monkeypatch.setenv("SPENDSTREAM_BUDGETS", str(budgets))
    monkeypatch.setenv("SPENDSTREAM_GUARD_CACHE_TTL", "0")
    monkeypatch.setenv("SPENDSTREAM_KAFKA_URL", f"kafka://127.0.0.1:{free_port()}")
    calls: list[tuple[Any, ...]] = []

    def call_model(model: str, messages: list[dict[str, Any]], max_tokens: int
                   ) -> tuple[str, dict[str, Any]]:
        calls.append((model, messages, max_tokens))
        return "hi!", {"prompt_tokens": 9, "completion_tokens": 2, "finish_reason": "stop"}

    namespace: dict[str, Any] = {"call_model": call_model}
    exec(compile(guard_example(), str(README), "exec"), namespace)
    try:
        assert namespace["answer"]("acct-1", [{"role": "user", "content": "hello"}]) == "hi!"
        assert calls == [("gpt-4o", [{"role": "user", "content": "hello"}], 50)]
        assert namespace["emitter"].stats.emitted == 1
        assert namespace["guard"].stats.emitted == 1
        redis.Redis.from_url(redis_url).set(
            f"rd-{uid}:" + cutoff_user("acct-1"),
            b'{"scope": "user", "id": "acct-1", "reason": "daily usd budget of tier free", '
            b'"spent": "0.14", "budget": "0.13", "unit": "usd", '
            b'"window_end": "2999-01-01T00:00:00Z"}', ex=60)
        refused = namespace["answer"]("acct-1", [{"role": "user", "content": "hello"}])
        assert "daily usd budget of tier free" in refused and "2999-01-01 00:00 UTC" in refused
        assert len(calls) == 1
    finally:
        namespace["emitter"].close(timeout=0.5)
        namespace["guard"].close()
