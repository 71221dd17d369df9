"""The pricing core: overrides, genai-prices' bundled table, unpriced models, odd input."""

from __future__ import annotations

import socket
import threading
import warnings
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from genai_prices import Usage, data_snapshot

from spendstream.contract.event import UsageEvent
from spendstream.domain.budgets import Price
from spendstream.domain.pricing import Priced, Pricer

D = Decimal
M = 1_000_000

OVERRIDES = {
    "house-model": Price(input=D("2"), output=D("8"), cached_input=D("0.5")),
    "no-cache-rate": Price(input=D("3"), output=D("15")),
    "free-cache": Price(input=D("1"), output=D("4"), cached_input=D("0")),
    "Claude-Sonnet-4-6": Price(input=D("2.55"), output=D("12.75")),
    "gpt-4o": Price(input=D("1"), output=D("1")),  # an override beats the table
}


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer(OVERRIDES)


@pytest.mark.parametrize(
    ("model", "inp", "out", "cached", "expected"),
    [
        # (input - cached) * input + cached * cached_input + output * output, per 1M tokens
        ("house-model", 1000, 100, 400, D("0.0022")),
        ("house-model", M, M, 0, D("10")),
        ("house-model", M, 0, M, D("0.5")),
        ("no-cache-rate", 1000, 0, 400, D("0.003")),  # no cached rate: cached at input rate
        ("free-cache", 1000, 0, 1000, D("0")),  # a cached rate of 0 is a price, not "unset"
        ("free-cache", 1000, 1000, 500, D("0.0045")),
        ("claude-sonnet-4-6", M, M, 0, D("15.30")),  # case-insensitive name match
        ("gpt-4o", M, M, 0, D("2")),
        ("house-model", 0, 0, 0, D("0")),
    ],
)
def test_override_math(pricer: Pricer, model: str, inp: int, out: int, cached: int,
                       expected: Decimal) -> None:
    cost = pricer.price(model, None, inp, out, cached)
    assert isinstance(cost, Decimal)
    assert cost == expected


def test_exact_override_name_wins_over_case_insensitive() -> None:
    p = Pricer({"M": Price(input=D("1"), output=D("1")), "m": Price(input=D("2"), output=D("2"))})
    assert p.price("M", None, M, 0) == D("1")
    assert p.price("m", None, M, 0) == D("2")


@pytest.mark.parametrize(
    ("model", "provider", "low", "high"),
    [  # $ for 1M input + 1M output: wide bands so a price update does not break the test
        ("gpt-4o", "openai", D("5"), D("30")),
        ("gpt-4o", None, D("5"), D("30")),
        ("gpt-4o-mini", "openai", D("0.2"), D("2")),
        ("GPT-4o-mini", None, D("0.2"), D("2")),
        ("claude-sonnet-4-5", "anthropic", D("5"), D("40")),
    ],
)
def test_table_models_are_priced_plausibly(model: str, provider: str | None, low: Decimal,
                                           high: Decimal) -> None:
    cost = Pricer().price(model, provider, M, M)
    assert isinstance(cost, Decimal)
    assert low <= cost <= high


def test_mini_is_cheaper_and_cache_reads_are_cheaper() -> None:
    p = Pricer()
    gpt4o, mini = p.price("gpt-4o", "openai", M, M), p.price("gpt-4o-mini", "openai", M, M)
    assert gpt4o is not None and mini is not None and 0 < mini < gpt4o
    full = p.price("gpt-4o", "openai", M, 0, 0)
    half = p.price("gpt-4o", "openai", M, 0, M // 2)
    assert full is not None and half is not None and 0 < half < full


def test_table_treats_cached_as_part_of_input() -> None:
    # genai-prices: cache_read_tokens is a slice of input_tokens; so is our cached_input_tokens.
    p = Pricer()
    lib = genai_prices.calc_price(
        Usage(input_tokens=M, output_tokens=0, cache_read_tokens=M // 2), "gpt-4o",
        provider_id="openai",
    )
    assert p.price("gpt-4o", "openai", M, 0, M // 2) == lib.total_price
    rate_in, rate_cached = lib.model_price.input_mtok, lib.model_price.cache_read_mtok
    assert isinstance(rate_in, Decimal) and isinstance(rate_cached, Decimal)
    expected = (rate_in + rate_cached) / 2  # half the 1M at each rate
    assert lib.total_price == expected


def test_cache_writes_are_priced_at_the_cache_write_rate() -> None:
    """100,000 prompt-cache write tokens on claude-sonnet-4-5 cost what genai-prices says
    ($3.75/MTok, not the $3 input rate), as a part of input_tokens, from an event too."""
    p = Pricer()
    lib = genai_prices.calc_price(Usage(input_tokens=100_000, cache_write_tokens=100_000),
                                  "claude-sonnet-4-5", provider_id="anthropic").total_price
    assert lib == Decimal("0.375")
    assert p.price("claude-sonnet-4-5", "anthropic", 100_000, 0,
                   cache_write_input_tokens=100_000) == lib
    event = UsageEvent(user_id="u", feature="f", model="claude-sonnet-4-5", provider="anthropic",
                       input_tokens=100_051, cached_input_tokens=0,
                       cache_write_input_tokens=100_000, output_tokens=10)
    mixed = genai_prices.calc_price(Usage(input_tokens=100_051, cache_write_tokens=100_000,
                                          output_tokens=10), "claude-sonnet-4-5",
                                    provider_id="anthropic").total_price
    assert p.price_event(event).cost == mixed
    # An override without a cache-write rate charges writes as input; with one, its rate.
    over = Pricer({"m": Price(input=Decimal(3), output=Decimal(15))})
    assert over.price("m", None, 100_000, 0, cache_write_input_tokens=100_000) == Decimal("0.3")
    over = Pricer({"m": Price(input=Decimal(3), output=Decimal(15),
                              cache_write_input=Decimal("3.75"))})
    assert over.price("m", None, 100_000, 0, cache_write_input_tokens=100_000) == lib
    # Reads and writes together beyond the input break the contract: unpriced.
    assert p.price("claude-sonnet-4-5", "anthropic", 100, 0, 60, cache_write_input_tokens=60) \
        is None


def test_fast_path_matches_genai_prices_for_every_table_model() -> None:
    """The hot path computes common cards itself; it must agree with the library exactly."""
    at = datetime(2026, 11, 23, tzinfo=UTC)
    p = Pricer()
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for provider in data_snapshot.get_snapshot().providers:
            for info in provider.models:
                card = info.get_prices(at)
                for inp, out, cached, written in [(1200, 300, 100, 0), (300_000, 5000, 250_000, 0),
                                                  (M, M, 0, 0), (300_000, 5000, 100_000, 150_000),
                                                  (1200, 300, 0, 1000)]:
                    mine = p._table_cost(info, inp, out, cached, at, written)
                    if mine is None:
                        continue  # priced per hour/page/character: unpriced by design
                    lib = card.calc_price(
                        Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=cached,
                              cache_write_tokens=written)
                    )["total_price"]
                    assert mine == lib, (provider.id, info.id, inp, out, cached, written)
                    checked += 1
    assert checked > 1000


@pytest.mark.parametrize("model", ["not-a-model-xyz", "", "gpt-4o-but-made-up-9000"])
def test_unknown_model_is_unpriced_never_zero(pricer: Pricer, model: str) -> None:
    assert pricer.price(model, None, 1000, 1000) is None
    event = UsageEvent(user_id="u", feature="f", model=model or "xxx-unknown",
                       input_tokens=1000, output_tokens=10)
    assert pricer.price_event(event) == Priced(D("0"), False, "unpriced")


def test_model_priced_per_hour_is_unpriced_not_free() -> None:
    assert Pricer().price("whisper-1", "openai", 1000, 1000) is None


def test_unknown_provider_falls_back_to_the_models_own_price() -> None:
    p = Pricer()
    assert p.price("gpt-4o", "my-gateway", M, M) == p.price("gpt-4o", "openai", M, M)


def _event(**kw: Any) -> UsageEvent:
    base: dict[str, Any] = {"user_id": "acct-7", "feature": "chat", "model": "gpt-4o",
                            "provider": "openai", "input_tokens": 1200, "output_tokens": 300}
    return UsageEvent(**(base | kw))


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (_event(status="error"), Priced(D("0"), True, "failed")),
        (_event(status="error", cost_usd="1.5"), Priced(D("0"), True, "failed")),
        (_event(status="error", model="unknown-zzz"), Priced(D("0"), True, "failed")),
        (_event(cost_usd="0.0123"), Priced(D("0.0123"), True, "event")),
        (_event(model="house-model", cost_usd="7"), Priced(D("7"), True, "event")),
        (_event(model="house-model", cached_input_tokens=200),
         Priced(D("0.0045"), True, "override")),
        (_event(model="unknown-zzz"), Priced(D("0"), False, "unpriced")),
    ],
)
def test_price_event(pricer: Pricer, event: UsageEvent, expected: Priced) -> None:
    got = pricer.price_event(event)
    assert got == expected
    assert isinstance(got.cost, Decimal)


def test_price_event_from_the_table() -> None:
    got = Pricer().price_event(_event(model="gpt-4o-mini", cached_input_tokens=200))
    assert got.source == "table" and got.priced
    assert isinstance(got.cost, Decimal) and got.cost > 0


@pytest.mark.parametrize(
    "args",
    [
        ("gpt-4o", "openai", -1, 0, 0),
        ("gpt-4o", "openai", 10, -5, 0),
        ("gpt-4o", "openai", 10, 0, 20),  # cached above input breaks the contract
        ("house-model", None, 10, 0, 20),
        ("gpt-4o", "openai", 1.5, 0, 0),
        ("gpt-4o", "openai", True, 0, 0),
        ("gpt-4o", "openai", "10", 0, 0),
        ("gpt-4o", "openai", None, 0, 0),
        (None, None, 10, 10, 0),
        (42, None, 10, 10, 0),
        (["gpt-4o"], None, 10, 10, 0),
        ("gpt-4o", 7, 10, 10, 0),
        ("gpt-4o", "openai", 10, 10, 0, "yesterday"),
        ("\x00\udcff", None, 1, 1, 0),
    ],
)
def test_never_raises_on_weird_input(pricer: Pricer, args: tuple[Any, ...]) -> None:
    assert pricer.price(*args) is None


def test_huge_counts_stay_exact_decimal(pricer: Pricer) -> None:
    n = 10**15
    assert pricer.price("house-model", None, n, n, n) == D("0.5") * 10**9 + D("8") * 10**9
    cost = pricer.price("gpt-4o", "openai", n, n, 0)
    assert isinstance(cost, Decimal) and cost > 0


def test_naive_and_old_timestamps_are_accepted() -> None:
    p = Pricer()
    assert p.price("gpt-4o", "openai", M, M, at=datetime(2025, 1, 1)) is not None
    assert p.price("gpt-4o", "openai", M, M, at=datetime(2020, 1, 1, tzinfo=UTC)) is not None


def test_resolution_is_cached_per_model_and_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Pricer()
    calls: list[tuple[Any, ...]] = []
    real = p._snapshot.find_provider_model

    def counting(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(p._snapshot, "find_provider_model", counting)
    for _ in range(3):
        p.price("gpt-4o", "openai", 10, 10)
        p.price("unknown-zzz", None, 10, 10)
    assert len(calls) == 2


def test_pricing_never_reaches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pricing tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(genai_prices.update_prices.httpx2, "get", no_network)
    p = Pricer()
    assert p.price("gpt-4o", "openai", 1000, 1000) is not None
    assert p.price("unknown-zzz", None, 1000, 1000) is None
    assert p._snapshot.from_auto_update is False
    assert not any(t.name.startswith("genai_prices") for t in threading.enumerate())
