"""Choosing the notifier from the Slack settings."""

from __future__ import annotations

import pytest

from spendstream.alerts import (
    LogNotifier,
    SlackBotNotifier,
    SlackWebhookNotifier,
    build_notifier,
)
from spendstream.errors import ConfigError, SpendstreamError

HOOK = "https://hooks.slack.com/services/T0/B0/abcdefghijklmnop"
TOKEN = "xoxb-0000-s3cr3t"


def test_webhook_wins() -> None:
    n = build_notifier(HOOK, TOKEN, "C1", None)
    assert isinstance(n, SlackWebhookNotifier)


def test_bot_mode() -> None:
    n = build_notifier(None, TOKEN, "C1", "http://127.0.0.1:9/api")
    assert isinstance(n, SlackBotNotifier)
    assert n.channel == "C1"
    assert n.api_url == "http://127.0.0.1:9/api"


def test_bot_mode_default_api_url() -> None:
    n = build_notifier(None, TOKEN, "#alerts", None)
    assert isinstance(n, SlackBotNotifier)
    assert n.api_url == "https://slack.com/api/"


@pytest.mark.parametrize("channel", [None, ""])
def test_bot_without_channel_says_what_to_set(channel: str | None) -> None:
    with pytest.raises(ConfigError, match="set SLACK_CHANNEL") as info:
        build_notifier(None, TOKEN, channel, None)
    assert isinstance(info.value, SpendstreamError)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("args", [(None, None, None, None), ("", "", "C1", "")])
def test_no_slack_settings_means_the_log(args: tuple[str | None, ...]) -> None:
    assert isinstance(build_notifier(*args), LogNotifier)


def test_reprs_hide_secrets() -> None:
    for n in (build_notifier(HOOK, None, None, None), build_notifier(None, TOKEN, "C1", None)):
        assert HOOK not in repr(n) and "abcdefghijklmnop" not in repr(n)
        assert TOKEN not in repr(n)
