"""The one error root of spendstream and its few meaningful subclasses."""

from __future__ import annotations


class SpendstreamError(Exception):
    """Root of every error spendstream raises on purpose."""


class ConfigError(SpendstreamError):
    """Settings or the budgets file are invalid; the message names the key and the fix."""


class BudgetExceeded(SpendstreamError):
    """A user, feature or the global budget is spent for the current window."""


class FeatureDisabled(SpendstreamError):
    """An operator switched the feature off (kill switch)."""


class Throttled(SpendstreamError):
    """Too many requests or tokens per unit of time; retry after the window resets."""


class ServiceUnavailable(SpendstreamError):
    """Kafka, Redis or Slack could not be reached; wraps the client's own error."""
