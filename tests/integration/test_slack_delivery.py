"""Alerts reach Slack through the real slack-sdk clients, against a local fake Slack.

Webhook and bot mode, Slack's failure answers (429, 5xx, slow, refused), the dispatcher's
retries and back-pressure, and secrets kept out of every log line.
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from slack_fake import Recorded, Reply, SlackFake
from slack_fake import slack_fake as slack_fake  # re-exported so pytest finds the fixture

from spendstream.alerts import (
    Alert,
    AlertDispatcher,
    Level,
    Notifier,
    NotifyError,
    SlackBotNotifier,
    SlackWebhookNotifier,
    render,
)

TOKEN = "xoxb-1234-5678-s3cr3tb0tT0k3n"
CHANNEL = "C0SPEND"
_seq = itertools.count(1)


def make_alert(subject: str | None = None) -> Alert:
    return Alert(
        scope="feature",
        subject=subject or f"chat-{next(_seq)}",
        kind="budget",
        level=Level.ALERT,
        previous=Level.CUTOFF,
        spent=Decimal("2410.50"),
        budget=Decimal("2000"),
        unit="usd",
        window_start=datetime(2026, 11, 1, tzinfo=UTC),
        window_end=datetime(2026, 12, 1, tzinfo=UTC),
    )


def webhook(fake: SlackFake, timeout: float = 2.0) -> SlackWebhookNotifier:
    return SlackWebhookNotifier(fake.webhook_url, timeout=timeout)


def bot(fake: SlackFake, timeout: float = 2.0) -> SlackBotNotifier:
    fake.token = TOKEN
    return SlackBotNotifier(TOKEN, CHANNEL, fake.api_url, timeout=timeout)


MODES = {"webhook": webhook, "bot": bot}


@pytest.fixture(params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def notifier_for(mode: str, fake: SlackFake, timeout: float = 2.0) -> Notifier:
    return MODES[mode](fake, timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def text_of(r: Recorded) -> str:
    return str(r.json["text"])


# one message, right shape


async def test_webhook_posts_one_message(slack_fake: SlackFake) -> None:
    alert = make_alert()
    await webhook(slack_fake).send(alert)

    [req] = slack_fake.requests
    text, blocks = render(alert)
    assert req.method == "POST"
    assert req.path == "/services/T0FAKE/B0FAKE/s3cr3tW3bh00kP4th"
    assert (req.header("Content-Type") or "").startswith("application/json")
    assert req.json == {"text": text, "blocks": blocks}
    assert slack_fake.delivered == [req]


async def test_bot_posts_one_message_with_bearer_token(slack_fake: SlackFake) -> None:
    alert = make_alert()
    await bot(slack_fake).send(alert)

    [req] = slack_fake.requests
    text, blocks = render(alert)
    assert req.path == "/api/chat.postMessage"
    assert req.header("Authorization") == f"Bearer {TOKEN}"
    assert req.json == {"channel": CHANNEL, "text": text, "blocks": blocks}
    assert slack_fake.delivered == [req]


async def test_bot_api_url_without_trailing_slash(slack_fake: SlackFake) -> None:
    await SlackBotNotifier(TOKEN, CHANNEL, f"{slack_fake.url}/api").send(make_alert())
    [req] = slack_fake.requests
    assert req.path == "/api/chat.postMessage"


# how Slack's answers map to NotifyError


@pytest.mark.parametrize(
    ("reply", "retryable", "retry_after"),
    [
        (Reply(429, headers={"Retry-After": "7"}), True, 7.0),
        (Reply(429), True, None),
        (Reply(429, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}), True, None),
        (Reply(429, headers={"Retry-After": "inf"}), True, None),
        (Reply(500), True, None),
        (Reply(503, headers={"Retry-After": "2"}), True, 2.0),
        (Reply(400), False, None),
        (Reply(404), False, None),
        (Reply(403), False, None),
    ],
)
async def test_http_status_mapping(
    slack_fake: SlackFake, mode: str, reply: Reply, retryable: bool, retry_after: float | None
) -> None:
    slack_fake.script(reply)
    with pytest.raises(NotifyError) as info:
        await notifier_for(mode, slack_fake).send(make_alert())
    assert info.value.retryable is retryable
    assert info.value.retry_after == retry_after
    assert str(reply.status) in str(info.value)


@pytest.mark.parametrize(
    ("error", "retryable", "hint"),
    [
        ("channel_not_found", False, "SLACK_CHANNEL"),
        ("not_in_channel", False, "SLACK_CHANNEL"),
        ("invalid_auth", False, "SLACK_BOT_TOKEN"),
        ("internal_error", True, "will retry"),
    ],
)
async def test_bot_ok_false_mapping(
    slack_fake: SlackFake, error: str, retryable: bool, hint: str
) -> None:
    slack_fake.script(Reply(200, body={"ok": False, "error": error}))
    with pytest.raises(NotifyError) as info:
        await bot(slack_fake).send(make_alert())
    assert info.value.retryable is retryable
    assert error in str(info.value) and hint in str(info.value)


async def test_bot_wrong_token_is_not_retried(slack_fake: SlackFake) -> None:
    slack_fake.token = TOKEN
    notifier = SlackBotNotifier("xoxb-wrong", CHANNEL, slack_fake.api_url)
    with pytest.raises(NotifyError, match="invalid_auth: check SLACK_BOT_TOKEN") as info:
        await notifier.send(make_alert())
    assert not info.value.retryable


async def test_slow_slack_is_a_retryable_timeout(slack_fake: SlackFake, mode: str) -> None:
    slack_fake.script(Reply(delay=5.0))
    started = time.monotonic()
    with pytest.raises(NotifyError, match="no answer in time") as info:
        await notifier_for(mode, slack_fake, timeout=0.2).send(make_alert())
    assert info.value.retryable
    assert time.monotonic() - started < 2.0


async def test_refused_connection_is_retryable(mode: str) -> None:
    with SlackFake() as fake:
        notifier = notifier_for(mode, fake)
    # The fake is stopped: its port now refuses connections.
    with pytest.raises(NotifyError) as info:
        await notifier.send(make_alert())
    assert info.value.retryable


async def test_malformed_url_is_not_retried() -> None:
    with pytest.raises(NotifyError, match="check SLACK_WEBHOOK_URL") as info:
        await SlackWebhookNotifier("http//hooks.slack.com/services/x").send(make_alert())
    assert not info.value.retryable


# through the dispatcher


async def test_429_with_retry_after_then_ok_is_delivered_once(slack_fake: SlackFake) -> None:
    slack_fake.script(Reply(429, headers={"Retry-After": "1"}))
    alert = make_alert()
    async with AlertDispatcher(webhook(slack_fake), base_delay=0.01) as d:
        assert d.submit(alert)
        assert await d.wait_idle(5)

    first, second = slack_fake.requests
    assert first.reply.status == 429
    assert second.at - first.at >= 0.95  # Retry-After honoured, not base_delay
    assert slack_fake.delivered == [second]
    assert text_of(second) == render(alert)[0]
    assert (d.sent, d.retries, d.failed) == (1, 1, 0)


async def test_5xx_then_ok_is_retried(slack_fake: SlackFake, mode: str) -> None:
    slack_fake.script(Reply(500), Reply(502), Reply(503))
    async with AlertDispatcher(notifier_for(mode, slack_fake), base_delay=0.01) as d:
        d.submit(make_alert())
        assert await d.wait_idle(5)

    assert [r.reply.status for r in slack_fake.requests] == [500, 502, 503, 200]
    assert len(slack_fake.delivered) == 1
    assert (d.sent, d.retries, d.failed) == (1, 3, 0)


async def test_gives_up_after_max_attempts(slack_fake: SlackFake) -> None:
    slack_fake.script(*[Reply(500)] * 3)
    async with AlertDispatcher(webhook(slack_fake), max_attempts=3, base_delay=0.01) as d:
        d.submit(make_alert())
        assert await d.wait_idle(5)
        d.submit(make_alert())  # the next alert still goes out
        assert await d.wait_idle(5)

    assert [r.reply.status for r in slack_fake.requests] == [500, 500, 500, 200]
    assert (d.sent, d.failed, d.retries) == (1, 1, 2)


async def test_not_retryable_fails_at_once(slack_fake: SlackFake) -> None:
    slack_fake.script(Reply(404))
    async with AlertDispatcher(webhook(slack_fake), base_delay=0.01) as d:
        d.submit(make_alert())
        assert await d.wait_idle(5)
    assert len(slack_fake.requests) == 1
    assert (d.sent, d.failed, d.retries) == (0, 1, 0)


async def test_submit_returns_at_once_while_slack_is_slow(slack_fake: SlackFake) -> None:
    slack_fake.script(Reply(delay=5.0))
    alerts = [make_alert() for _ in range(3)]
    d = AlertDispatcher(webhook(slack_fake, timeout=0.3), base_delay=0.01)
    await d.start()
    assert d.submit(alerts[0])
    await slack_fake.wait_for(1)  # the slow request is in flight now

    # submit is a plain call on the loop the slow request needs: had it waited for the
    # request, it could not have returned at all.
    accepted = [d.submit(a) for a in alerts[1:]]
    assert accepted == [True, True]
    assert await d.wait_idle(5)
    await d.stop()

    reqs = slack_fake.requests
    assert len(reqs) == 4  # the slow one timed out and was sent again
    # The others did not wait for it: they went out while it was held.
    assert text_of(reqs[0]) == text_of(reqs[3]) == render(alerts[0])[0]
    assert sorted(text_of(r) for r in reqs[1:3]) == sorted(render(a)[0] for a in alerts[1:])
    assert (d.sent, d.retries, d.failed) == (3, 1, 0)


async def test_full_queue_drops_and_counts(
    slack_fake: SlackFake, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = [make_alert() for _ in range(5)]
    d = AlertDispatcher(webhook(slack_fake), max_queue=2, base_delay=0.01)
    with caplog.at_level(logging.ERROR, "spendstream.alerts"):
        accepted = [d.submit(a) for a in alerts]  # before start: nothing drains yet
    assert accepted == [True, True, False, False, False]
    assert d.dropped == 3
    assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1

    await d.start()
    assert await d.wait_idle(5)
    await d.stop()
    # Alerts of different keys go out concurrently: the two kept are posted, in any order.
    assert sorted(text_of(r) for r in slack_fake.requests) == sorted(
        render(a)[0] for a in alerts[:2])
    assert d.sent == 2


# secrets


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture everything at DEBUG, slack-sdk and aiohttp included."""
    caplog.set_level(logging.DEBUG)
    for name in ("slack_sdk", "aiohttp", "asyncio", "spendstream"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def assert_clean(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


async def test_secrets_never_reach_logs_or_errors(
    slack_fake: SlackFake, all_logs: pytest.LogCaptureFixture
) -> None:
    hook_path = "/services/T0FAKE/B0FAKE/s3cr3tW3bh00kP4th"
    secrets = (TOKEN, slack_fake.webhook_url, hook_path, "s3cr3tW3bh00kP4th")
    slack_fake.script(
        Reply(500),
        Reply(429, headers={"Retry-After": "0"}),
        Reply(delay=5.0),
        Reply(404),
        Reply(500),
        Reply(200, body={"ok": False, "error": "invalid_auth"}),
    )
    hook = webhook(slack_fake, timeout=0.3)
    errors: list[NotifyError] = []

    async with AlertDispatcher(hook, max_attempts=4, base_delay=0.01) as d:
        d.submit(make_alert())  # 500, 429, timeout, then 404: given up
        assert await d.wait_idle(5)
    async with AlertDispatcher(bot(slack_fake), max_attempts=4, base_delay=0.01) as d2:
        d2.submit(make_alert())  # 500, then invalid_auth: given up
        d2.submit(make_alert())  # ok
        assert await d2.wait_idle(5)
    assert (d.failed, d2.failed, d2.sent) == (1, 1, 1)

    # A refused connection and a malformed URL, straight from the notifiers.
    port = free_port()
    for notifier in (
        SlackWebhookNotifier(f"http://127.0.0.1:{port}{hook_path}"),
        SlackWebhookNotifier(f"http//not a url{hook_path}"),
        SlackBotNotifier(TOKEN, CHANNEL, f"http://127.0.0.1:{port}/api/"),
    ):
        with pytest.raises(NotifyError) as info:
            await notifier.send(make_alert())
        errors.append(info.value)
        assert_clean(repr(notifier), *secrets)

    # slack-sdk did try to log the URL at DEBUG; the filter blanked it.
    assert any("***" in r.getMessage() for r in all_logs.records)
    assert any("not delivered" in r.getMessage() for r in all_logs.records)
    assert_clean(all_logs.text, *secrets)
    for record in all_logs.records:
        assert_clean(record.getMessage(), *secrets)
    for err in errors:
        cause: BaseException | None = err
        while cause is not None:
            assert_clean(f"{cause!s} {cause!r}", *secrets)
            cause = cause.__cause__ or cause.__context__
