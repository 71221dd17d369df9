"""The budgets file: the documented shape loads; a bad file names the key and the problem."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
import yaml

from spendstream.domain.budgets import load_budgets, parse_budgets
from spendstream.errors import ConfigError
from spendstream.examples import DEMO_BUDGETS, EXAMPLE_BUDGETS


def test_the_documented_example_loads_with_decimal_money(tmp_path):
    path = tmp_path / "budgets.yaml"
    path.write_text(EXAMPLE_BUDGETS)
    b = load_budgets(path)
    assert b.users.limit_of("acct-9").usd == Decimal("1.00")
    assert b.users.tier_of("anyone") == "free"
    assert b.users.limit_of("anyone").tokens == 10000
    assert b.features["chat"].limit.usd == Decimal(2000)
    assert b.features["quick_answer"].model == "gpt-4o-mini"
    assert b.global_.tokens_per_minute == 1_000_000
    assert b.prices["claude-sonnet-4-6"].output == Decimal("12.75")
    assert isinstance(b.thresholds.alert, Decimal)
    parse_budgets(yaml.safe_load(DEMO_BUDGETS))


@pytest.mark.parametrize(("doc", "named", "problem"), [
    ({"users": {"tiers": {"free": {"usd_per_day": 1}}}}, "users.tiers.free.usd_per_day",
     "unknown key"),
    ({"features": {"chat": {"usd": -1}}}, "features.chat.usd", "greater than or equal to 0"),
    ({"features": {"chat": {"period": "week"}}}, "features.chat.period", "'minute'"),
    ({"global": {"daily_usd": "lots"}}, "global.daily_usd", "decimal"),
    ({"users": {"default_tier": "gold", "tiers": {"free": {"usd": 1}}}}, "users",
     "default_tier 'gold'"),
    ({"users": {"tiers": {"free": {"usd": 1}}, "members": {"a": "pro"}}}, "users",
     "members.a: tier 'pro'"),
    ({"users": {"tiers": {"free": {}}}}, "users.tiers.free", "give usd, tokens or both"),
    ({"default_feature": "other", "features": {"chat": {}}}, "(top level)",
     "default_feature 'other' is not one of the features ['chat']"),
    ({"thresholds": {"warn": 1.5, "cutoff": 1.0}}, "thresholds", "warn <= cutoff"),
    ({"prices": {"x": {"input": 1}}}, "prices.x.output", "Field required"),
    ({"budget": {}}, "budget", "unknown key"),
])
def test_bad_files_name_the_key(doc, named, problem):
    with pytest.raises(ConfigError) as e:
        parse_budgets(doc)
    assert named in str(e.value) and problem in str(e.value)


def test_missing_file_and_bad_yaml_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="spendstream init"):
        load_budgets(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("users: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_budgets(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_budgets(listy)


@pytest.mark.parametrize(("text", "named"), [
    ("users:\n  tiers:\n    free: {usd: 0.1}\nusers:\n  tiers:\n    free: {usd: 100}\n",
     "key 'users' is given twice (line 1 and line 4)"),
    ("users:\n  tiers:\n    free: {usd: 0.1, usd: 100}\n",
     "key 'usd' is given twice (line 3 and line 3)"),
    ("users:\n  tiers:\n    free: {usd: 0.1}\n    free: {usd: 100}\n",
     "key 'free' is given twice (line 3 and line 4)"),
])
def test_a_repeated_key_is_an_error_not_the_last_value(tmp_path, text, named):
    """YAML keeps the last of two equal keys: a $0.10 tier would become $100 unseen."""
    path = tmp_path / "budgets.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_budgets(path)


def test_a_merge_key_is_not_a_repeat(tmp_path):
    path = tmp_path / "budgets.yaml"
    path.write_text("users:\n  tiers:\n    free: &b {usd: 0.1, tokens: 100}\n"
                    "    pro:\n      <<: *b\n      usd: 1\n")
    tiers = load_budgets(path).users.tiers
    assert (tiers["pro"].usd, tiers["pro"].tokens) == (Decimal(1), 100)


def test_a_file_that_is_not_text_or_not_a_file_is_one_clear_error(tmp_path):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_budgets(binary)
    with pytest.raises(ConfigError, match="cannot read budgets file .*Is a directory"):
        load_budgets(tmp_path)
