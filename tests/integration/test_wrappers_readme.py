"""The README's wrapper example runs as written: real clients (pointed at the fake LLM by
their own environment variables), the real guard on Redis."""

from __future__ import annotations

import pytest
from fake_llm import TEXT, FakeLLM
from fake_llm import fake_llm as fake_llm  # re-exported so pytest finds the fixture

from spendstream.domain.budgets import parse_budgets
from spendstream.producers import UsageEvent
from spendstream.producers.guard import Guard
from tests.docs import ROOT, block_under

pytestmark = pytest.mark.integration

SDK_GUIDE = ROOT / "docs" / "sdk.md"
BUDGETS = parse_budgets({
    "features": {
        "chat": {"usd": 100, "max_output_tokens": 200, "model": "gpt-4o-mini"},
        "summary": {"usd": 100, "max_output_tokens": 300, "model": "claude-3-5-haiku-latest"},
    },
})


def example() -> str:
    return block_under(SDK_GUIDE, "## OpenAI and Anthropic wrappers")


class ListSink:
    def __init__(self) -> None:
        self.events: list[UsageEvent] = []

    def emit(self, event: UsageEvent) -> bool:
        self.events.append(event)
        return True


def test_readme_wrapper_example_runs(fake_llm: FakeLLM, redis_url: str, uid: str,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.openai_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_llm.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
    sink = ListSink()
    guard = Guard(redis_url, BUDGETS, sink, prefix=f"ss-{uid}:", cache_ttl=0.0)
    try:
        exec(compile(example(), str(SDK_GUIDE), "exec"), {"guard": guard})
    finally:
        guard.close()

    assert capsys.readouterr().out == f"{TEXT}\n{TEXT}{TEXT}\n"
    assert [(e.provider, e.model, e.feature, e.estimated) for e in sink.events] == [
        ("openai", "gpt-4o-mini", "chat", False), ("openai", "gpt-4o-mini", "chat", False),
        ("anthropic", "claude-3-5-haiku-latest", "summary", False)]
    assert [r.json["max_tokens"] for r in fake_llm.requests] == [200, 200, 300]
