"""spendstream: a circuit breaker for what LLM features cost.

Applications import :mod:`spendstream.producers`; the stream workers live in
:mod:`spendstream.streams` and Slack alerting in :mod:`spendstream.alerts`.
"""

from spendstream.errors import (
    BudgetExceeded,
    ConfigError,
    FeatureDisabled,
    SpendstreamError,
    Throttled,
)

__version__ = "0.1.0"

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "FeatureDisabled",
    "SpendstreamError",
    "Throttled",
    "__version__",
]
