"""The dispatcher with in-memory notifiers: order, retries, back-pressure, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from spendstream.alerts.console import LogNotifier
from spendstream.alerts.dispatch import AlertDispatcher
from spendstream.alerts.format import render
from spendstream.alerts.notifier import Notifier, NotifyError
from spendstream.contract.alert import Alert, Level
from tests.helpers import wait_until_async

_seq = itertools.count(1)


def make_alert(subject: str | None = None) -> Alert:
    return Alert(
        scope="user",
        subject=subject or f"acct-{next(_seq)}",
        kind="budget",
        level=Level.WARN,
        previous=Level.OK,
        spent=Decimal("0.11"),
        budget=Decimal("0.13"),
        unit="usd",
        window_start=datetime(2026, 11, 23, tzinfo=UTC),
        window_end=datetime(2026, 11, 24, tzinfo=UTC),
    )


class Scripted:
    """A notifier that fails as told, then succeeds; records every attempt."""

    def __init__(self, *failures: Exception, hold: asyncio.Event | None = None) -> None:
        self.failures = list(failures)
        self.attempts: list[tuple[float, Alert]] = []
        self.delivered: list[Alert] = []
        self.hold = hold

    async def send(self, alert: Alert) -> None:
        self.attempts.append((time.monotonic(), alert))
        if self.hold is not None:
            await self.hold.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.delivered.append(alert)


def retryable(after: float | None = None) -> NotifyError:
    return NotifyError("slack down", retryable=True, retry_after=after)


async def until(condition: Callable[[], bool], timeout: float = 1.0) -> None:
    """Poll ``condition`` on the loop until it holds (finely: these lanes are fast)."""
    await wait_until_async(condition, timeout, interval=0.001)


def test_scripted_is_a_notifier() -> None:
    assert isinstance(Scripted(), Notifier)
    assert isinstance(LogNotifier(), Notifier)


def transitions(subject: str, n: int) -> list[Alert]:
    """``n`` alerts of one state machine (one key), in the order of its levels."""
    return [Alert(scope="user", subject=subject, kind="budget", level=Level(1 + i % 4),
                  previous=Level(i % 4), spent=Decimal(i), budget=Decimal(1), unit="usd",
                  window_start=datetime(2026, 11, 23, tzinfo=UTC),
                  window_end=datetime(2026, 11, 24, tzinfo=UTC)) for i in range(n)]


async def test_delivers_everything_in_order_per_key() -> None:
    n = Scripted()
    alerts = [a for i in range(10) for a in transitions(f"acct-{i}", 5)]
    async with AlertDispatcher(n) as d:
        assert all(d.submit(a) for a in alerts)
        assert await d.wait_idle(2)
    assert sorted(n.delivered, key=alerts.index) == alerts
    for i in range(10):
        mine = [a for a in n.delivered if a.subject == f"acct-{i}"]
        assert mine == [a for a in alerts if a.subject == f"acct-{i}"]
    assert (d.sent, d.failed, d.dropped, d.retries) == (50, 0, 0, 0)


async def test_one_failing_alert_holds_up_no_other() -> None:
    """The first alert's Slack request hangs (then fails and is retried): the five users'
    alerts behind it are delivered meanwhile."""
    hold = asyncio.Event()

    class HangsFirst(Scripted):
        async def send(self, alert: Alert) -> None:
            if alert.subject == "stuck" and not hold.is_set():
                self.attempts.append((time.monotonic(), alert))
                await hold.wait()
                raise retryable()
            await super().send(alert)

    n = HangsFirst()
    stuck, *later = transitions("stuck", 2)
    others = [make_alert() for _ in range(5)]
    async with AlertDispatcher(n, base_delay=0.001) as d:
        for a in [stuck, *others, *later]:
            d.submit(a)
        await until(lambda: len(n.delivered) == 5)
        assert n.delivered == others  # the stuck key's second alert waits for its first
        hold.set()
        assert await d.wait_idle(2)
    assert n.delivered[-2:] == [stuck, *later]


async def test_stop_keeps_what_it_did_not_deliver() -> None:
    hold = asyncio.Event()
    d = AlertDispatcher(Scripted(hold=hold), concurrency=1)
    await d.start()
    alerts = [make_alert() for _ in range(3)]
    for a in alerts:
        d.submit(a)
    await until(lambda: d.pending == 2)  # one in flight, two waiting
    await d.stop(timeout=0.05)
    assert d.abandoned == alerts


async def test_retries_keep_order() -> None:
    n = Scripted(retryable(), retryable())
    alerts = transitions("acct-r", 3)
    async with AlertDispatcher(n, base_delay=0.001) as d:
        for a in alerts:
            d.submit(a)
        assert await d.wait_idle(2)
    assert n.delivered == alerts
    assert [a for _, a in n.attempts] == [alerts[0]] * 3 + alerts[1:]
    assert d.retries == 2


async def test_retry_after_is_honoured() -> None:
    n = Scripted(retryable(after=0.2))
    async with AlertDispatcher(n, base_delay=0.001) as d:
        d.submit(make_alert())
        assert await d.wait_idle(2)
    (t0, _), (t1, _) = n.attempts
    assert t1 - t0 >= 0.19


async def test_not_retryable_fails_at_once_and_the_lane_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    n = Scripted(NotifyError("channel_not_found", retryable=False))
    first, second = make_alert(), make_alert()
    async with AlertDispatcher(n, base_delay=0.001) as d:
        d.submit(first)
        d.submit(second)
        assert await d.wait_idle(2)
    assert n.delivered == [second]
    assert (d.sent, d.failed, d.retries) == (1, 1, 0)
    assert "channel_not_found" in caplog.text


async def test_gives_up_after_max_attempts(caplog: pytest.LogCaptureFixture) -> None:
    n = Scripted(*[retryable() for _ in range(10)])
    async with AlertDispatcher(n, max_attempts=3, base_delay=0.001) as d:
        d.submit(make_alert("acct-x"))
        assert await d.wait_idle(2)
    assert len(n.attempts) == 3
    assert (d.sent, d.failed, d.retries) == (0, 1, 2)
    assert "'user:acct-x:budget:2026-11-23T00:00:00+00:00' not delivered after 3" in caplog.text


async def test_a_crashing_notifier_does_not_kill_the_lane() -> None:
    n = Scripted(RuntimeError("bug"))
    async with AlertDispatcher(n) as d:
        d.submit(make_alert())
        d.submit(make_alert())
        assert await d.wait_idle(2)
    assert (d.sent, d.failed) == (1, 1)


@pytest.mark.parametrize(
    ("attempt", "retry_after", "low", "high"),
    [
        (1, None, 0.25, 0.5),
        (2, None, 0.5, 1.0),
        (4, None, 2.0, 4.0),
        (20, None, 15.0, 30.0),  # capped at max_delay
        (1, 3.0, 3.0, 3.0),  # the server's wait wins
        (1, 120.0, 120.0, 120.0),  # even above max_delay
    ],
)
def test_backoff(attempt: int, retry_after: float | None, low: float, high: float) -> None:
    d = AlertDispatcher(Scripted(), base_delay=0.5, max_delay=30.0)
    for _ in range(20):
        assert low <= d.backoff(attempt, retry_after) <= high


async def test_submit_never_blocks_while_the_notifier_hangs() -> None:
    hold = asyncio.Event()
    n = Scripted(hold=hold)
    async with AlertDispatcher(n, max_queue=100) as d:
        d.submit(make_alert())
        await until(lambda: len(n.attempts) == 1)  # the lane took it and hangs
        # submit is a plain call on the loop the hanging notifier needs: returning at all
        # proves it does not wait for the notifier.
        results = [d.submit(make_alert()) for _ in range(150)]
        assert results.count(True) == 100 and results.count(False) == 50
        assert d.dropped == 50
        hold.set()
        assert await d.wait_idle(2)
    assert d.sent == 101


async def test_submit_never_raises() -> None:
    d = AlertDispatcher(Scripted())
    d._queue = None  # type: ignore[assignment]  # simulate a broken dispatcher
    assert d.submit(make_alert()) is False
    assert d.dropped == 1


async def test_stop_drains_then_refuses() -> None:
    n = Scripted()
    d = AlertDispatcher(n)
    await d.start()
    for _ in range(5):
        d.submit(make_alert())
    await d.stop()
    assert d.sent == 5
    assert d.submit(make_alert()) is False
    assert d.dropped == 1
    with pytest.raises(RuntimeError):
        await d.start()


async def test_stop_counts_what_it_could_not_deliver(caplog: pytest.LogCaptureFixture) -> None:
    hold = asyncio.Event()
    d = AlertDispatcher(Scripted(hold=hold))
    await d.start()
    for _ in range(3):
        d.submit(make_alert())
    started = time.monotonic()
    await d.stop(timeout=0.1)
    assert time.monotonic() - started < 1
    assert (d.sent, d.failed) == (0, 3)  # one in flight, two queued
    assert "3 alert(s) not delivered before shutdown" in caplog.text


async def test_wait_idle_times_out() -> None:
    d = AlertDispatcher(Scripted(hold=asyncio.Event()))
    await d.start()
    d.submit(make_alert())
    assert await d.wait_idle(0.05) is False
    await d.stop(timeout=0)


# publish: once per alert, its own lane


async def test_publish_once_per_alert_even_with_retries() -> None:
    published: list[Alert] = []

    async def publish(alert: Alert) -> None:
        published.append(alert)

    alerts = [make_alert() for _ in range(3)]
    n = Scripted(retryable(), retryable())
    async with AlertDispatcher(n, publish=publish, base_delay=0.001) as d:
        for a in alerts:
            d.submit(a)
        assert await d.wait_idle(2)
    assert published == alerts
    assert sorted(n.delivered, key=alerts.index) == alerts


async def test_publish_errors_are_logged_and_delivery_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def publish(alert: Alert) -> None:
        raise ConnectionError("kafka down")

    n = Scripted()
    async with AlertDispatcher(n, publish=publish) as d:
        d.submit(make_alert())
        d.submit(make_alert())
        assert await d.wait_idle(2)
    assert d.sent == 2
    assert d.publish_failed == 2
    assert "kafka down" in caplog.text


async def test_a_slack_outage_does_not_delay_publishing() -> None:
    published = asyncio.Event()

    async def publish(alert: Alert) -> None:
        published.set()

    hold = asyncio.Event()
    async with AlertDispatcher(Scripted(hold=hold), publish=publish) as d:
        d.submit(make_alert())
        await asyncio.wait_for(published.wait(), 1)  # while the notifier still hangs
        hold.set()


async def test_full_notify_queue_still_publishes() -> None:
    published: list[Alert] = []

    async def publish(alert: Alert) -> None:
        published.append(alert)

    hold = asyncio.Event()
    n = Scripted(hold=hold)
    a, b, c = make_alert(), make_alert(), make_alert()
    async with AlertDispatcher(n, publish=publish, max_queue=1, concurrency=1) as d:
        assert d.submit(a) is True
        await until(lambda: len(n.attempts) == 1)  # a is in flight, the queue is empty
        assert d.submit(b) is True  # the queue is full now
        await until(lambda: len(published) == 2)
        assert d.submit(c) is False  # dropped for Slack...
        await until(lambda: len(published) == 3)  # ...but still on the alert topic
        hold.set()
    assert published == [a, b, c]
    assert n.delivered == [a, b]
    assert d.dropped == 1


# the log notifier


async def test_log_notifier_logs_the_fallback(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    alert = make_alert()
    with caplog.at_level(logging.INFO, "spendstream.alerts"):
        await LogNotifier().send(alert)
    [record] = caplog.records
    assert record.name == "spendstream.alerts"
    assert record.levelno == logging.WARNING
    assert record.getMessage() == render(alert)[0]
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("kw", [{"max_queue": 0}, {"max_attempts": 0}, {"base_delay": -1}])
def test_rejects_nonsense_settings(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AlertDispatcher(Scripted(), **kw)  # type: ignore[arg-type]
