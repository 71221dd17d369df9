"""Slack adapters of the notifier port: an incoming webhook or a bot token.

Both send one request per call and leave retries to the dispatcher (slack-sdk's own retry
handlers are switched off), so one retry policy sees every attempt. Neither the webhook
URL nor the token ever reaches an error message or a log line: they are secrets.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from spendstream.alerts.format import render
from spendstream.alerts.notifier import NotifyError
from spendstream.contract.alert import Alert

DEFAULT_TIMEOUT = 5.0
"""Seconds per request: a slow Slack must not hold the alert queue for long."""

# Web API errors that arrive as HTTP 200 {"ok": false} but are Slack's fault, not ours.
_RETRYABLE_API_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
_API_HINTS = {
    "channel_not_found": "check SLACK_CHANNEL",
    "not_in_channel": "invite the bot to SLACK_CHANNEL",
    "is_archived": "SLACK_CHANNEL is archived; pick another",
    "invalid_auth": "check SLACK_BOT_TOKEN",
    "not_authed": "set SLACK_BOT_TOKEN",
    "account_inactive": "SLACK_BOT_TOKEN belongs to a deactivated app; issue a new one",
    "token_revoked": "SLACK_BOT_TOKEN was revoked; issue a new one",
    "missing_scope": "give the bot the chat:write scope",
}
_WEBHOOK_HINTS = {
    403: "the webhook's channel forbids posting",
    404: "the webhook was removed or SLACK_WEBHOOK_URL is wrong",
    410: "the webhook's channel is archived",
}


class _Redact(logging.Filter):
    """Blanks registered secrets out of every record of the logger slack-sdk writes to.

    slack-sdk logs the full webhook URL at DEBUG; this keeps it out even when an operator
    turns DEBUG on.
    """

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def scrub(self, text: str) -> str:
        # Longest first, so a URL is blanked whole before its path is.
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            try:
                message = record.getMessage()
            except Exception:  # a malformed record is logging's problem, not a send failure
                return True
            scrubbed = self.scrub(message)
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
        return True


_REDACT = _Redact()
_SDK_LOG = logging.getLogger("spendstream.alerts.slack_sdk")
_SDK_LOG.addFilter(_REDACT)


def _register(*secrets: str) -> None:
    # Clients quote or unquote URLs before they put them in messages: blank every form.
    for s in secrets:
        for form in {s, quote(s, safe=":/?&=%@"), unquote(s)}:
            if len(form) > 1:
                _REDACT.secrets.add(form)


def _webhook_secrets(url: str) -> tuple[str, ...]:
    """The URL, its path, and its last path segment: Slack's secret is in the path."""
    path = urlsplit(url).path
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return (url, path, last) if len(last) >= 8 else (url, path)


def _retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds from a ``Retry-After`` header; ``None`` when absent or an HTTP date."""
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                return None
            # "inf" would park the queue for good; "nan" is no answer at all.
            return max(0.0, seconds) if math.isfinite(seconds) else None
    return None


def _transport_error(what: str, setting: str, e: Exception) -> NotifyError:
    """Map a client-side failure (timeout, refused, reset, bad URL) to a NotifyError."""
    if isinstance(e, aiohttp.InvalidURL):
        return NotifyError(f"{what}: not a valid http(s) URL; check {setting}", retryable=False)
    if isinstance(e, TimeoutError):  # asyncio's and aiohttp's timeouts are TimeoutError
        return NotifyError(f"{what}: no answer in time; will retry", retryable=True)
    # type(e).__name__ only: aiohttp messages can quote the host and, for some errors, the URL.
    if isinstance(e, aiohttp.ClientError | OSError):
        return NotifyError(f"{what}: {type(e).__name__}; will retry", retryable=True)
    # Anything else is a bug on our side of the wire: trying again will not fix it.
    return NotifyError(f"{what}: unexpected {type(e).__name__}", retryable=False)


def _status_error(what: str, status: int, reason: str, hint: str | None) -> NotifyError:
    """Map an HTTP answer other than success to a NotifyError."""
    reason = _REDACT.scrub(reason.strip()[:200])
    label = f"{status} {reason}".strip()
    if status == 429:
        return NotifyError(f"{what}: rate limited ({label}); will retry", retryable=True)
    if status >= 500 or status == 408:
        return NotifyError(f"{what}: Slack answered {label}; will retry", retryable=True)
    tail = f": {hint}" if hint else ""
    return NotifyError(f"{what}: Slack answered {label}{tail}", retryable=False)


class SlackWebhookNotifier:
    """Posts alerts to a Slack incoming webhook (``SLACK_WEBHOOK_URL``; any URL works)."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        _register(*_webhook_secrets(url))
        self._client = AsyncWebhookClient(
            url,
            timeout=timeout,  # type: ignore[arg-type]  # aiohttp takes a float
            logger=_SDK_LOG,
            retry_handlers=[],
        )

    def __repr__(self) -> str:
        return "SlackWebhookNotifier(url='***')"

    async def send(self, alert: Alert) -> None:
        """Post ``alert``; raise :class:`NotifyError` unless Slack answered 2xx."""
        what = "Slack webhook"
        text, blocks = render(alert)
        try:
            resp = await self._client.send(text=text, blocks=blocks)
        except Exception as e:
            err = _chain(_transport_error(what, "SLACK_WEBHOOK_URL", e), e)
        else:
            if 200 <= resp.status_code < 300:
                return
            err = _status_error(
                what, resp.status_code, resp.body or "", _WEBHOOK_HINTS.get(resp.status_code)
            )
            err.retry_after = _retry_after(resp.headers)
        raise err  # outside ``except``: a suppressed cause must not linger as __context__


class SlackBotNotifier:
    """Posts alerts with ``chat.postMessage`` as a bot (``SLACK_BOT_TOKEN``, ``SLACK_CHANNEL``).

    ``api_url`` (``SLACK_API_URL``) replaces ``https://slack.com/api/``, for a proxy, a
    test double or an enterprise gateway.
    """

    def __init__(
        self,
        token: str,
        channel: str,
        api_url: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.channel = channel
        self.api_url = api_url or AsyncWebClient.BASE_URL
        _register(token, token.strip())
        self._client = AsyncWebClient(
            token=token,
            base_url=self.api_url,
            timeout=timeout,  # type: ignore[arg-type]  # aiohttp takes a float
            logger=_SDK_LOG,
            retry_handlers=[],
        )

    def __repr__(self) -> str:
        return f"SlackBotNotifier(token='***', channel={self.channel!r}, api_url={self.api_url!r})"

    async def send(self, alert: Alert) -> None:
        """Post ``alert`` to the channel; raise :class:`NotifyError` unless Slack says ok."""
        what = f"Slack chat.postMessage to {self.channel}"
        text, blocks = render(alert)
        try:
            await self._client.chat_postMessage(channel=self.channel, text=text, blocks=blocks)
            return
        except SlackApiError as e:
            err = _chain(_api_error(what, e), e)
        except SlackClientError as e:
            err = _chain(NotifyError(f"{what}: {type(e).__name__}", retryable=False), e)
        except Exception as e:
            err = _chain(_transport_error(what, "SLACK_API_URL", e), e)
        raise err  # outside ``except``: a suppressed cause must not linger as __context__


def _api_error(what: str, e: SlackApiError) -> NotifyError:
    resp = e.response
    status = int(getattr(resp, "status_code", 0) or 0)
    data = getattr(resp, "data", None)
    code = str(data.get("error", "")) if isinstance(data, dict) else ""
    headers = getattr(resp, "headers", None)
    if status == 200 and code in _RETRYABLE_API_ERRORS:
        err = NotifyError(f"{what}: Slack answered {code}; will retry", retryable=True)
    else:
        err = _status_error(what, status, code, _API_HINTS.get(code))
    err.retry_after = _retry_after(headers)
    return err


def _chain(err: NotifyError, cause: BaseException) -> NotifyError:
    """Keep the client's error as the cause, unless its text would carry a secret."""
    err.__cause__ = None if _leaks(cause) else cause
    return err


def _leaks(e: BaseException) -> bool:
    """Whether chaining ``e`` would carry a secret into a logged traceback."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = f"{cur!s} {cur!r}"
        if _REDACT.scrub(text) != text:
            return True
        cur = cur.__cause__ or cur.__context__
    return False
