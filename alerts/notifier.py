"""The notifier port: where an alert goes to reach a human. Adapters live beside it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from spendstream.contract.alert import Alert
from spendstream.errors import SpendstreamError


class NotifyError(SpendstreamError):
    """An alert could not be delivered.

    ``retryable`` says whether trying again may succeed (rate limit, 5xx, timeout, lost
    connection) or not (bad URL, revoked token, unknown channel). ``retry_after`` is the
    server's own wait in seconds, when it gave one. The message is safe to log: adapters
    never put a webhook URL or a token in it.
    """

    def __init__(
        self, message: str, *, retryable: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


@runtime_checkable
class Notifier(Protocol):
    """Delivers one alert; raises :class:`NotifyError` when it cannot."""

    async def send(self, alert: Alert) -> None:
        """Deliver ``alert`` once; retries are the dispatcher's job, not the notifier's."""
        ...
