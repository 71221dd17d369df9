"""The SDK guide's budgets file with limits, reservations and the response cache loads as
written, and its python example runs against the real guard on Redis with that file."""

from __future__ import annotations

from decimal import Decimal

import pytest
import yaml

from spendstream.domain.budgets import parse_budgets
from spendstream.producers.guard import Guard
from tests.docs import ROOT, block_under

pytestmark = pytest.mark.integration

GUIDE = ROOT / "docs" / "sdk.md"
SECTION = "### Limits, reservations and the response cache"


def budgets_text() -> str:
    return block_under(GUIDE, SECTION, lang="yaml")


def example() -> str:
    return block_under(GUIDE, SECTION)


def test_the_guides_budgets_file_loads_with_every_option() -> None:
    b = parse_budgets(yaml.safe_load(budgets_text()))
    free = b.users.tiers["free"]
    assert free.allowed_models == ("gpt-4o-mini",)
    assert free.limits is not None and (free.limits.rpm, free.limits.tpm) == (30, 20000)
    chat = b.features["chat"]
    assert chat.limits is not None and (chat.limits.rpm, chat.limits.tpm) == (20, 40000)
    assert b.features["faq"].cache is not None and b.features["faq"].cache.ttl == 3600
    assert b.default_feature == "chat"
    assert b.reservations is not None and (b.reservations.ttl, b.reservations.hold) == (
        600, 5)


def test_the_guides_example_runs(redis_url: str, uid: str) -> None:
    guard = Guard(redis_url, parse_budgets(yaml.safe_load(budgets_text())),
                  prefix=f"guide-{uid}:", cache_ttl=0.0)
    scope: dict[str, object] = {"guard": guard}
    try:
        exec(compile(example(), str(GUIDE), "exec"), scope)
        ask = scope["ask"]
        assert callable(ask)
        first = ask("acct-1", "What is a fox?")
        assert first.startswith("(gpt-4o-mini, up to 500 tokens)")
        assert first.endswith("[left today: $0.5]")  # nothing counted yet today
        answers = [ask("acct-1", "What is a fox?") for _ in range(20)]
    finally:
        guard.close()
    # chat's 20 requests per minute: the 21st call in the minute is throttled.
    assert all(a.startswith("(gpt-4o-mini") for a in answers[:19])
    assert answers[19].startswith("Too many requests: try again at ")
    assert guard._reserver is not None and guard._reserver.global_budget == Decimal(100)


def test_the_readmes_budgets_file_has_the_cache_the_reservations_and_the_limits() -> None:
    readme = block_under(ROOT / "README.md", "## At the call site", lang="yaml")
    b = parse_budgets(yaml.safe_load(readme))
    free = b.users.tiers["free"]
    assert free.limits is not None and (free.limits.rpm, free.limits.tpm) == (30, 20000)
    assert b.features["chat"].limits is not None and b.features["chat"].limits.rpm == 20
    assert b.features["faq"].cache is not None and b.features["faq"].cache.ttl == 3600
    assert b.reservations is not None and b.reservations.ttl == 600
