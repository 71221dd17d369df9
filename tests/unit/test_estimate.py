"""`spendstream estimate` through ``main([...])``: override prices give exact dollars."""

from __future__ import annotations

from pathlib import Path

import pytest

from spendstream.cli import main

BUDGETS = """\
features:
  chat: {period: month, usd: 2000, model: my-model}
  daily: {period: day, usd: 10, model: my-model}
  hourly: {period: hour, usd: 1, model: my-model}
  tokens_only: {tokens: 1000000, model: my-model}
  free_tier: {usd: 0, model: my-model}
  no_model: {usd: 100}
prices:
  my-model: {input: 1.00, output: 4.00, cached_input: 0.25}
  per-k: {input: 1000, output: 0}
"""


@pytest.fixture
def budgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A budgets file with override prices; the working directory has none of its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPENDSTREAM_BUDGETS", raising=False)
    path = tmp_path / "prices.yaml"
    path.write_text(BUDGETS)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["estimate", *args])
    out, err = capsys.readouterr()
    return code, out, err


TRAFFIC = ["--calls-per-day", "20000", "--input-tokens", "1200", "--output-tokens", "300"]


@pytest.mark.parametrize(("args", "expected"), [
    # (1200 × $1 + 300 × $4) / 1M = $0.0024 a call
    (["--model", "my-model"],
     ["per call:   $0.002400", "per day:    $48.00 (20,000 calls)",
      "per month:  $1,440.00 (30 days)"]),
    # half the input cached at $0.25: (600 × 1 + 600 × 0.25 + 300 × 4) / 1M = $0.00195
    (["--model", "my-model", "--cached-fraction", "0.5"],
     ["per call:   $0.001950", "600 of them cached", "per day:    $39.00",
      "per month:  $1,170.00"]),
    # override names match case-insensitively, as in the worker
    (["--model", "MY-MODEL"], ["per day:    $48.00"]),
    (["--feature", "chat"],
     ["model:      my-model", "per month:  $1,440.00",
      "budget:     $2,000.00 per month; estimate $1,440.00 = 72.0% of budget"]),
    (["--feature", "daily"],
     ["budget:     $10.00 per day; estimate $48.00 = 480.0% of budget (over budget)"]),
    # $48 a day spread over 24 hours: $2.00 an hour against $1
    (["--feature", "hourly"],
     ["budget:     $1.00 per hour; estimate $2.00 = 200.0% of budget (over budget)",
      "spread evenly over each hour"]),
    (["--feature", "tokens_only"], ["the feature has no USD budget to compare with"]),
    (["--feature", "free_tier"], ["against a $0 budget"]),
])
def test_estimates(budgets: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                   expected: list[str]) -> None:
    code, out, err = run(capsys, *TRAFFIC, *args, "--budgets", str(budgets))
    assert code == 0, err
    assert f"priced from `prices:` in {budgets}" in out
    for line in expected:
        assert line in out


@pytest.mark.parametrize(("calls", "tokens", "daily", "monthly"), [
    ("5", "1", "$0.01", "$0.15"),        # $0.005 a day rounds half up; the month is exact
    ("1000", "333", "$333.00", "$9,990.00"),
    ("3", "1", "$0.00", "$0.09"),        # the month is not 30 × the rounded day
    ("0", "1000", "$0.00", "$0.00"),
])
def test_cents_are_rounded_half_up_from_the_unrounded_daily_cost(
        budgets: Path, capsys: pytest.CaptureFixture[str], calls: str, tokens: str,
        daily: str, monthly: str) -> None:
    # per-k costs $1,000 per 1M input tokens: $0.001 per token
    code, out, _ = run(capsys, "--calls-per-day", calls, "--input-tokens", tokens,
                       "--output-tokens", "0", "--model", "per-k", "--budgets", str(budgets))
    assert code == 0
    assert f"per day:    {daily} " in out
    assert f"per month:  {monthly} " in out


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "no-such-model-xyz"], "add it under `prices:`"),
    (["--feature", "missing"], "no feature 'missing'"),
    (["--feature", "no_model"], "has no `model:`"),
])
def test_errors_exit_2_saying_what_to_do(budgets: Path, capsys: pytest.CaptureFixture[str],
                                         args: list[str], message: str) -> None:
    code, out, err = run(capsys, *TRAFFIC, *args, "--budgets", str(budgets))
    assert code == 2
    assert out == ""
    assert message in err


def test_unknown_model_names_the_budgets_file(budgets: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, _, err = run(capsys, *TRAFFIC, "--model", "no-such-model-xyz", "--budgets", str(budgets))
    assert f"in {budgets}" in err
    assert "no-such-model-xyz: {input:" in err  # an example entry to paste


def test_without_a_budgets_file_a_model_is_priced_from_the_bundled_table(
        budgets: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *TRAFFIC, "--model", "gpt-4o-mini")
    assert code == 0, err
    assert "priced from the bundled genai-prices table" in out


def test_the_settings_budgets_file_is_used_when_none_is_given(
        budgets: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPENDSTREAM_BUDGETS", str(budgets))
    code, out, err = run(capsys, *TRAFFIC, "--feature", "chat")
    assert code == 0, err
    assert "72.0% of budget" in out


def test_a_feature_needs_a_budgets_file(budgets: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *TRAFFIC, "--feature", "chat")
    assert code == 2
    assert "budgets file budgets.yaml not found" in err


@pytest.mark.parametrize("bad", [
    ["--calls-per-day", "-1", "--input-tokens", "1", "--output-tokens", "1", "--model", "m"],
    ["--calls-per-day", "1", "--input-tokens", "1", "--output-tokens", "1", "--model", "m",
     "--cached-fraction", "1.5"],
    ["--calls-per-day", "1", "--input-tokens", "1", "--output-tokens", "1"],
    ["--calls-per-day", "1", "--input-tokens", "1", "--output-tokens", "1", "--model", "m",
     "--feature", "chat"],
])
def test_bad_arguments_are_usage_errors(bad: list[str], capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["estimate", *bad])
    assert exit_.value.code == 2
