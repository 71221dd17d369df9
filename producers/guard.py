"""The call-site guard: bound every model call before it happens, meter it after.

INTERFACE DRAFT (issue 3): the signatures below are the contract between the guard and
the OpenAI/Anthropic wrappers; the bodies are being written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from spendstream.producers.event import UsageEvent


@dataclass(frozen=True, slots=True)
class Admission:
    """What the guard allows for one call: the (maybe trimmed) messages, model and cap."""

    user_id: str
    feature: str
    model: str
    max_tokens: int | None
    messages: list[dict[str, Any]]
    input_tokens_local: int
    """The local tiktoken count of ``messages`` (chat overhead included)."""
    input_exact: bool
    """False when the count is an approximation (encoding unavailable offline)."""
    trimmed: bool = False
    warning: dict[str, Any] | None = None
    """The user's or feature's warn flag value, if set: show a banner."""
    remaining_usd: Decimal | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Guard:
    """Synchronous guard (redis-py); see :class:`AsyncGuard` for asyncio apps."""

    def admit(self, user_id: str, feature: str, messages: list[dict[str, Any]], *,
              model: str | None = None, max_tokens: int | None = None,
              tier: str | None = None) -> Admission:
        """Check flags, rate limit and input budget; raise BudgetExceeded, FeatureDisabled
        or Throttled (all SpendstreamError) or return what the call may use."""
        raise NotImplementedError

    def record(self, admission: Admission, *, provider: str | None, input_tokens: int,
               output_tokens: int, cached_input_tokens: int = 0, status: str = "ok",
               finish_reason: str | None = None, estimated: bool = False,
               model: str | None = None) -> UsageEvent:
        """Build and emit the usage event of a finished (or failed, or cut) call."""
        raise NotImplementedError


class AsyncGuard:
    """The same as :class:`Guard` for asyncio apps (redis.asyncio); ``admit`` is awaited,
    ``record`` is synchronous (emitting never blocks)."""

    async def admit(self, user_id: str, feature: str, messages: list[dict[str, Any]], *,
                    model: str | None = None, max_tokens: int | None = None,
                    tier: str | None = None) -> Admission:
        """See :meth:`Guard.admit`."""
        raise NotImplementedError

    def record(self, admission: Admission, *, provider: str | None, input_tokens: int,
               output_tokens: int, cached_input_tokens: int = 0, status: str = "ok",
               finish_reason: str | None = None, estimated: bool = False,
               model: str | None = None) -> UsageEvent:
        """See :meth:`Guard.record`."""
        raise NotImplementedError
