"""The notifier used when no Slack settings exist: alerts go to the log, never nowhere."""

from __future__ import annotations

import logging

from spendstream.alerts.format import render
from spendstream.contract.alert import Alert

logger = logging.getLogger("spendstream.alerts")


class LogNotifier:
    """Logs each alert's one-line fallback text at WARNING on ``spendstream.alerts``."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self._log = log or logger

    def __repr__(self) -> str:
        return f"LogNotifier(logger={self._log.name!r})"

    async def send(self, alert: Alert) -> None:
        """Log ``alert``; never raises."""
        text, _ = render(alert)
        self._log.warning("%s", text)
