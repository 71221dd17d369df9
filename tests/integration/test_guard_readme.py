"""The guard example (README's front page and docs/sdk.md), run as written against a real
Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from spendstream.contract.keys import cutoff_user
from spendstream.embedded import free_port
from tests.docs import ROOT, block_under

pytestmark = pytest.mark.integration

README = ROOT / "README.md"


def guard_example() -> str:
    """The README's example, which must be the SDK guide's too (one example, one test)."""
    front = block_under(README, "## At the call site")
    assert front == block_under(ROOT / "docs" / "sdk.md", "## Guard")
    return front


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
