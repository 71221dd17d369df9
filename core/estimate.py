"""``spendstream estimate``: what a feature costs per call, per day and per 30-day month.

Pure arithmetic over ``Decimal``: the per-call price comes from the same
:class:`~spendstream.domain.pricing.Pricer` the worker uses (the budgets file's
``prices:`` first, then the bundled table), so an estimate and the live spend agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Final

from spendstream.domain.budgets import Budgets, Feature, load_budgets
from spendstream.domain.pricing import Pricer
from spendstream.errors import ConfigError

CENT: Final = Decimal("0.01")
DAYS_PER_MONTH: Final = 30
_PER_DAY: Final[dict[str, int]] = {"minute": 1440, "hour": 24, "day": 1}
"""How many of each shorter budget period fit in a day."""


def cents(amount: Decimal) -> Decimal:
    """``amount`` rounded to the cent, half up (as an invoice would)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class Usage:
    """One feature's traffic: calls a day and the average call's tokens."""

    calls_per_day: int
    input_tokens: int
    output_tokens: int
    cached_fraction: Decimal = Decimal(0)

    @property
    def cached_tokens(self) -> int:
        """Input tokens read from the provider's cache (part of ``input_tokens``)."""
        return int((self.input_tokens * self.cached_fraction).to_integral_value(ROUND_HALF_UP))


@dataclass(frozen=True, slots=True)
class Estimate:
    """The cost of ``usage`` on ``model``; ``daily`` and ``monthly`` are rounded to cents."""

    model: str
    usage: Usage
    per_call: Decimal
    daily: Decimal
    monthly: Decimal
    price_source: str


@dataclass(frozen=True, slots=True)
class BudgetShare:
    """The estimate against a feature's USD budget, per the budget's own period."""

    feature: str
    period: str
    budget: Decimal
    cost: Decimal
    """The estimated spend over one budget period (rounded to cents)."""

    @property
    def percent(self) -> Decimal | None:
        """``cost`` as a percentage of ``budget``; ``None`` for a $0 budget."""
        if self.budget == 0:
            return None
        return (self.cost / self.budget * 100).quantize(Decimal("0.1"), ROUND_HALF_UP)


def estimate(model: str, usage: Usage, budgets: Budgets, budgets_path: Path | None) -> Estimate:
    """Price ``usage`` on ``model``; :class:`ConfigError` when the model has no price."""
    per_call = Pricer(budgets.prices).price(model, None, usage.input_tokens,
                                            usage.output_tokens, usage.cached_tokens)
    if per_call is None:
        where = budgets_path or "the budgets file (SPENDSTREAM_BUDGETS)"
        raise ConfigError(
            f"no price for model {model!r}: add it under `prices:` in {where}, in USD per "
            f"1M tokens, e.g.\n  prices:\n    {model}: {{input: 2.50, output: 10.00}}")
    overridden = model.casefold() in {name.casefold() for name in budgets.prices}
    source = f"`prices:` in {budgets_path}" if overridden else "the bundled genai-prices table"
    daily = per_call * usage.calls_per_day
    return Estimate(model, usage, per_call, cents(daily), cents(daily * DAYS_PER_MONTH), source)


def feature_model(name: str, budgets: Budgets, budgets_path: Path | None) -> tuple[str, Feature]:
    """The feature's configured model; :class:`ConfigError` when it has none."""
    feature = budgets.features.get(name)
    if feature is None:
        known = ", ".join(sorted(budgets.features)) or "none"
        raise ConfigError(f"no feature {name!r} in {budgets_path} (features: {known}); "
                          "or give --model instead")
    if feature.model is None:
        raise ConfigError(f"feature {name!r} in {budgets_path} has no `model:`; add one, "
                          "or give --model instead")
    return feature.model, feature


def budget_share(name: str, feature: Feature, est: Estimate) -> BudgetShare | None:
    """The estimate over the feature's budget period; ``None`` without a USD budget.

    A month is :data:`DAYS_PER_MONTH` days; shorter periods get the day's cost divided
    evenly, so they show the average, not a peak.
    """
    if feature.usd is None:
        return None
    daily = est.per_call * est.usage.calls_per_day
    month = feature.period == "month"
    cost = daily * DAYS_PER_MONTH if month else daily / _PER_DAY[feature.period]
    return BudgetShare(name, feature.period, feature.usd, cents(cost))


def report(est: Estimate, share: BudgetShare | None, feature: Feature | None) -> list[str]:
    """The lines ``spendstream estimate`` prints."""
    u = est.usage
    lines = [
        f"model:      {est.model} (priced from {est.price_source})",
        f"per call:   ${est.per_call:.6f} ({u.input_tokens:,} input tokens, "
        f"{u.cached_tokens:,} of them cached; {u.output_tokens:,} output tokens)",
        f"per day:    ${est.daily:,.2f} ({u.calls_per_day:,} calls)",
        f"per month:  ${est.monthly:,.2f} ({DAYS_PER_MONTH} days)",
    ]
    if feature is None:
        return lines
    if share is None:
        lines.append("budget:     the feature has no USD budget to compare with")
        return lines
    line = f"budget:     ${share.budget:,.2f} per {share.period}; estimate ${share.cost:,.2f} "
    if share.percent is None:
        line += "against a $0 budget (any spend is over it)"
    else:
        line += f"= {share.percent}% of budget"
        if share.percent > 100:
            line += " (over budget)"
    lines.append(line)
    if share.period in _PER_DAY and share.period != "day":
        lines.append(f"            (the day's cost spread evenly over each {share.period}: "
                     "an average, peaks run higher)")
    return lines


def _budgets(given: Path | None, default: Path, needed: bool) -> tuple[Budgets, Path | None]:
    """The file given, else the settings' one if it exists (or is needed), else none."""
    path = given or default
    if given is None and not needed and not path.exists():
        return Budgets(), None
    return load_budgets(path), path


def run_estimate(usage: Usage, *, model: str | None, feature: str | None,
                 budgets: Path | None, default_budgets: Path) -> int:
    """Print the estimate for ``model`` or ``feature``'s model; the exit code of ``estimate``."""
    loaded, path = _budgets(budgets, default_budgets, needed=feature is not None)
    chosen: Feature | None = None
    if feature is not None:
        model, chosen = feature_model(feature, loaded, path)
    if model is None:
        raise ConfigError("give --model MODEL or --feature FEATURE")
    est = estimate(model, usage, loaded, path)
    share = budget_share(feature, chosen, est) if feature and chosen else None
    print("\n".join(report(est, share, chosen)))
    return 0
