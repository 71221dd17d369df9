"""Alerts: tell a human when spend crosses a line. Knows nothing of faust.

The dispatcher queues alerts and delivers them in the background through a notifier:
Slack (incoming webhook or bot token) or, with no Slack settings, the log.
"""

from __future__ import annotations

from spendstream.alerts.console import LogNotifier
from spendstream.alerts.dispatch import AlertDispatcher
from spendstream.alerts.format import render
from spendstream.alerts.notifier import Notifier, NotifyError
from spendstream.alerts.slack import DEFAULT_TIMEOUT, SlackBotNotifier, SlackWebhookNotifier
from spendstream.contract.alert import Alert, Level
from spendstream.errors import ConfigError

__all__ = [
    "Alert",
    "AlertDispatcher",
    "Level",
    "LogNotifier",
    "Notifier",
    "NotifyError",
    "SlackBotNotifier",
    "SlackWebhookNotifier",
    "build_notifier",
    "render",
]


def build_notifier(
    webhook_url: str | None,
    bot_token: str | None,
    channel: str | None,
    api_url: str | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> Notifier:
    """The notifier the settings ask for: webhook, else bot, else the log.

    Takes plain strings (the caller unwraps its ``SecretStr``s); empty strings count as
    unset, as an empty environment variable usually means. A bot token without a channel
    is a :class:`~spendstream.errors.ConfigError`.
    """
    if webhook_url:
        return SlackWebhookNotifier(webhook_url, timeout=timeout)
    if bot_token:
        if not channel:
            raise ConfigError(
                "SLACK_BOT_TOKEN is set but SLACK_CHANNEL is not: set SLACK_CHANNEL to the "
                "channel to post alerts to (an id such as C0123456789, or #name), or unset "
                "SLACK_BOT_TOKEN to log alerts instead"
            )
        return SlackBotNotifier(bot_token, channel, api_url or None, timeout=timeout)
    return LogNotifier()
