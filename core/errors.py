"""The one error root of spendstream and its few meaningful subclasses."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal


class SpendstreamError(Exception):
    """Root of every error spendstream raises on purpose."""


class ConfigError(SpendstreamError):
    """Settings or the budgets file are invalid; the message names the key and the fix."""


class UnknownFeature(ConfigError):
    """The call named a feature the budgets file does not list (a typo such as
    ``"suport"``) and no ``default_feature`` is configured: never admitted uncapped."""


class Unmetered(ConfigError):
    """A client method the wrappers cannot meter (a raw-response variant, a beta or batch
    endpoint): it would spend outside every budget, so it is refused."""


class Refused(SpendstreamError):
    """A call the guard refused; says why, how much was spent of what, and when it resets.

    ``scope`` and ``subject`` name the flag (``user``/``acct-7``, ``feature``/``chat``,
    ``global``/``daily_cap``); ``resets_at`` is the end of the flag's window (UTC), or
    ``None`` when it has no end (an operator's switch without a TTL).
    """

    def __init__(self, message: str = "", *, reason: str | None = None,
                 spent: Decimal | None = None, budget: Decimal | None = None,
                 unit: str | None = None, resets_at: datetime | None = None,
                 scope: str | None = None, subject: str | None = None) -> None:
        super().__init__(message or reason or type(self).__name__)
        self.reason = reason if reason is not None else message
        self.spent = spent
        self.budget = budget
        self.unit = unit
        self.resets_at = resets_at
        self.scope = scope
        self.subject = subject


class BudgetExceeded(Refused):
    """A user, feature or the global budget is spent for the current window."""


class FeatureDisabled(Refused):
    """An operator switched the feature off (kill switch), or its hard cap is reached."""


class Throttled(Refused):
    """Too many requests or tokens per unit of time; retry after the window resets."""


class ModelNotAllowed(Refused):
    """The caller asked for a model the user's tier may not use (``allowed_models``)."""


class InputTooLong(SpendstreamError):
    """The prompt exceeds the feature's ``max_input_tokens`` and its policy cannot fit it."""

    def __init__(self, message: str, *, tokens: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.limit = limit


class ServiceUnavailable(SpendstreamError):
    """Kafka, Redis or Slack could not be reached; wraps the client's own error."""
