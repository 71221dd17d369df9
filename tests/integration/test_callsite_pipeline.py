"""The call site end to end: the real guard and Redis decide, the real emitter publishes to
the broker, a real worker (``spendstream worker``) counts and writes the live spend keys the
guard reads back. One test per behaviour of issue 15 that needs the worker's side."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
import yaml
from fake_llm import FakeLLM
from fake_llm import fake_llm as fake_llm  # re-exported so pytest finds the fixture

from spendstream.contract.keys import spend_user
from spendstream.domain.budgets import parse_budgets
from spendstream.embedded import EmbeddedBroker
from spendstream.errors import ModelNotAllowed, Throttled
from spendstream.producers import SyncEmitter
from spendstream.producers.guard import Guard
from spendstream.producers.wrappers import wrap_openai
from tests.fault.faultkit import Keys, Stack
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

BUDGETS = """\
users:
  tiers:
    free: {usd: 0.50, allowed_models: [gpt-4o-mini]}
    metered: {tokens: 10000}
    both: {usd: 1.00, tokens: 5000}
  members: {acct-t: metered, acct-b: both}
features:
  chat: {usd: 100, max_output_tokens: 500, model: gpt-4o-mini}
  quick: {usd: 100, max_output_tokens: 50, model: gpt-4o-mini, limits: {rpm: 3}}
  faq: {usd: 100, max_output_tokens: 50, model: gpt-4o-mini, cache: {ttl: 1h}}
prices:
  gpt-4o-mini: {input: 0.15, output: 0.60}
"""
HELLO = [{"role": "user", "content": "Tell me about foxes."}]


class Pipeline:
    """One test's stack: worker, emitter and a guard on its own topic and prefix."""

    def __init__(self, broker: EmbeddedBroker, redis_url: str, uid: str, tmp: Path,
                 budgets: str = BUDGETS) -> None:
        self.stack = Stack(broker.bootstrap, broker.url, redis_url, uid, tmp, budgets,
                           partitions=1)
        self.stack.create_topics()
        self.budgets = parse_budgets(yaml.safe_load(budgets))
        self.worker = self.stack.worker()
        self.emitter = SyncEmitter(broker.bootstrap, self.stack.topic)
        self.guard = Guard(redis_url, self.budgets, self.emitter, prefix=self.stack.prefix,
                           cache_ttl=0.0)
        self.keys: Keys = self.stack.redis()

    def counted(self, user: str, events: int) -> dict[str, object]:
        """The user's live spend once the worker has counted ``events`` of their calls."""
        assert self.emitter.flush(10)
        value = wait_until(lambda: self.keys.events(spend_user(user)) >= events
                           and self.keys.get(spend_user(user)), 60,
                           f"{events} events of {user} counted", check=self.worker.alive)
        assert isinstance(value, dict)
        return value

    def close(self) -> None:
        self.emitter.close()
        self.guard.close()
        self.stack.close()


@pytest.fixture
def pipeline(broker: EmbeddedBroker, redis_url: str, uid: str, tmp_path: Path
             ) -> Iterator[Pipeline]:
    p = Pipeline(broker, redis_url, uid, tmp_path)
    yield p
    p.close()
    assert p.worker.proc.returncode == 0, p.worker.output()


def test_admission_reports_what_is_left_for_usd_token_and_mixed_tiers(pipeline: Pipeline
                                                                      ) -> None:
    g = pipeline.guard
    fresh = {u: g.admit(u, "chat", HELLO) for u in ("acct-f", "acct-t", "acct-b")}
    assert (fresh["acct-f"].remaining_usd, fresh["acct-f"].remaining_tokens) == (
        Decimal("0.50"), None)
    assert (fresh["acct-t"].remaining_usd, fresh["acct-t"].remaining_tokens) == (None, 10000)
    assert (fresh["acct-b"].remaining_usd, fresh["acct-b"].remaining_tokens) == (
        Decimal("1.00"), 5000)
    for admission in fresh.values():
        g.record(admission, provider="openai", input_tokens=1000, output_tokens=200)
    for user in fresh:
        pipeline.counted(user, 1)

    # 1000 x $0.15/M + 200 x $0.60/M = $0.00027 and 1,200 tokens, as the worker counted.
    after = {u: g.admit(u, "chat", HELLO) for u in fresh}
    assert (after["acct-f"].remaining_usd, after["acct-f"].remaining_tokens) == (
        Decimal("0.49973"), None)
    assert (after["acct-t"].remaining_usd, after["acct-t"].remaining_tokens) == (None, 8800)
    assert (after["acct-b"].remaining_usd, after["acct-b"].remaining_tokens) == (
        Decimal("0.99973"), 3800)


def test_a_model_outside_the_tier_is_refused_or_tiered_down(
        broker: EmbeddedBroker, redis_url: str, uid: str, tmp_path: Path) -> None:
    p = Pipeline(broker, redis_url, uid, tmp_path)
    try:
        with pytest.raises(ModelNotAllowed, match=r"tier free may not use model 'gpt-4o' "
                                                  r"\(allowed: gpt-4o-mini\)"):
            p.guard.admit("acct-f", "chat", HELLO, model="gpt-4o")
        # Tiers without a list may use any model.
        assert p.guard.admit("acct-t", "chat", HELLO, model="gpt-4o").model == "gpt-4o"
        down = Guard(redis_url, parse_budgets({
            **yaml.safe_load(BUDGETS),
            "users": {**yaml.safe_load(BUDGETS)["users"], "on_model_not_allowed": "downgrade"}}),
            p.emitter, prefix=p.stack.prefix, cache_ttl=0.0)
        a = down.admit("acct-f", "chat", HELLO, model="gpt-4o")
        assert a.model == "gpt-4o-mini"
        down.record(a, provider="openai", input_tokens=10, output_tokens=5, model="gpt-4o-mini")
        down.close()
        spend = p.counted("acct-f", 1)
        assert spend["spent_usd"] == "0.0000045"  # priced as the allowed model
    finally:
        p.close()
    assert p.worker.proc.returncode == 0, p.worker.output()


def test_a_throttled_call_never_reaches_the_provider_or_the_worker(
        pipeline: Pipeline, fake_llm: FakeLLM) -> None:
    client = wrap_openai(openai.OpenAI(api_key="t", base_url=fake_llm.openai_url,
                                       max_retries=0), pipeline.guard)
    for _ in range(3):
        client.chat.completions.create(messages=HELLO, user_id="acct-q", feature="quick")
    with pytest.raises(Throttled, match="feature quick's limit of 3 requests per minute"):
        client.chat.completions.create(messages=HELLO, user_id="acct-q", feature="quick")
    assert len(fake_llm.requests) == 3
    spend = pipeline.counted("acct-q", 3)
    assert spend["events"] == 3


def test_a_cache_hit_is_counted_by_the_worker_and_costs_nothing(
        pipeline: Pipeline, fake_llm: FakeLLM) -> None:
    client = wrap_openai(openai.OpenAI(api_key="t", base_url=fake_llm.openai_url,
                                       max_retries=0), pipeline.guard)
    for _ in range(3):
        client.chat.completions.create(messages=HELLO, user_id="acct-c", feature="faq")
    assert len(fake_llm.requests) == 1
    spend = pipeline.counted("acct-c", 3)
    # Only the first call cost money: 21 x $0.15/M + 17 x $0.60/M.
    assert (spend["events"], spend["spent_usd"]) == (3, "0.00001335")
    assert spend["spent_tokens"] == 21 + 17
