"""Deliver alerts in the background, so a Slack outage never stalls the stream worker.

``submit`` only enqueues. Two background lanes drain the queue: one delivers to the
notifier with retries and exponential backoff, the other publishes each alert once to the
alert topic. They are separate so that minutes of Slack retries never delay the alert
topic, which is the durable record.

Delivery is concurrent across state machines and ordered within one: each alert key has
its own little lane (at most ``concurrency`` requests at once), so one alert that Slack
refuses, rate-limits or holds never delays the others, and one key's transitions still
arrive in order. What is not delivered at ``stop`` is kept in :attr:`abandoned`, for the
worker to hand to the next run.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

from spendstream.alerts.notifier import Notifier, NotifyError
from spendstream.contract.alert import Alert

logger = logging.getLogger("spendstream.alerts")

Publish = Callable[[Alert], Awaitable[None]]
"""``async def publish(alert) -> None``: e.g. produce ``alert.to_dict()`` to a Kafka topic."""


class AlertDispatcher:
    """A bounded queue of alerts and the background tasks that deliver them.

    Counters (plain ints, read them any time): ``sent`` delivered; ``failed`` accepted but
    given up on (not retryable, ``max_attempts`` used up, or still queued at ``stop``);
    ``dropped`` refused by ``submit`` (queue full or dispatcher stopped); ``retries``
    attempts after the first; ``publish_failed`` alerts the ``publish`` lane lost.

    Call ``submit`` from the event loop's thread (a faust agent, a coroutine): the queue is
    an :class:`asyncio.Queue`.
    """

    def __init__(
        self,
        notifier: Notifier,
        publish: Publish | None = None,
        max_queue: int = 10_000,
        max_attempts: int = 8,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        concurrency: int = 8,
    ) -> None:
        if max_queue < 1 or max_attempts < 1 or concurrency < 1:
            raise ValueError("max_queue, max_attempts and concurrency must be at least 1")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("base_delay and max_delay must not be negative")
        self.notifier = notifier
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.retries = 0
        self.publish_failed = 0
        self._publish = publish
        self.max_queue = max_queue
        self._queue: asyncio.Queue[Alert] = asyncio.Queue()
        self._unfinished = 0
        self._sending = 0
        self._publish_queue: asyncio.Queue[Alert] | None = (
            asyncio.Queue(max_queue) if publish is not None else None
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._slots = asyncio.Semaphore(concurrency)
        self._backlog: dict[str, deque[Alert]] = {}
        """Per alert key, what was taken off the queue and is not finished (head: in
        flight)."""
        self._lanes: dict[str, asyncio.Task[None]] = {}
        self.abandoned: list[Alert] = []
        """Alerts accepted but not delivered when :meth:`stop` returned, oldest first."""
        self._publishing: Alert | None = None
        self._closed = False
        self._overflowing = False

    @property
    def pending(self) -> int:
        """Alerts waiting for the notifier, not counting those in flight."""
        return self._unfinished - self._sending

    def _enqueue(self, alert: Alert) -> None:
        """Queue for the notifier; :class:`asyncio.QueueFull` past ``max_queue`` waiting."""
        if self.pending >= self.max_queue:
            raise asyncio.QueueFull
        self._queue.put_nowait(alert)
        self._unfinished += 1

    def submit(self, alert: Alert) -> bool:
        """Queue ``alert`` without waiting; ``False`` (and one more ``dropped``) if refused.

        Never raises and never blocks: the caller is the hot path of a stream worker. The
        alert still goes to ``publish`` when the notifier's queue is full.
        """
        try:
            if self._closed:
                self.dropped += 1
                logger.error("alert %r dropped: the dispatcher is stopped", alert.key)
                return False
            if self._publish_queue is not None:
                try:
                    self._publish_queue.put_nowait(alert)
                except asyncio.QueueFull:
                    self.publish_failed += 1
                    logger.error("alert %r not published: publish queue full", alert.key)
            try:
                self._enqueue(alert)
            except asyncio.QueueFull:
                self.dropped += 1
                # Once per overflow, not once per alert: an outage must not flood the log.
                if not self._overflowing:
                    logger.error(
                        "alert queue full (%d waiting): dropping alerts until the notifier "
                        "catches up; first dropped: %r",
                        self._queue.qsize(),
                        alert.key,
                    )
                self._overflowing = True
                return False
            self._overflowing = False
            return True
        except Exception:
            self.dropped += 1
            logger.exception("alert dropped: submit failed unexpectedly")
            return False

    def resume(self, alert: Alert) -> bool:
        """Queue ``alert`` for the notifier only: an alert an earlier run published to the
        alert topic but did not deliver before it stopped. ``False`` if refused."""
        if self._closed:
            return False
        try:
            self._enqueue(alert)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True

    async def start(self) -> None:
        """Start the background lanes on the running loop; a second call does nothing."""
        if self._closed:
            raise RuntimeError("an AlertDispatcher cannot be restarted after stop()")
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._notify_lane(), name="alerts-notify"))
        if self._publish_queue is not None:
            self._tasks.append(asyncio.create_task(self._publish_lane(), name="alerts-publish"))

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every accepted alert is sent, failed or published; ``False`` on timeout."""
        joins = [self._queue.join()]
        if self._publish_queue is not None:
            joins.append(self._publish_queue.join())
        try:
            await asyncio.wait_for(asyncio.gather(*joins), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        """Refuse new alerts, deliver what can be delivered within ``timeout``, then stop.

        Alerts still queued or in flight at the deadline are logged and counted ``failed``.
        """
        self._closed = True
        if self._tasks:
            await self.wait_idle(timeout)
        # Read before cancelling: the lanes clear these on their way out.
        publishing = self._publishing is not None
        tasks = [*self._tasks, *self._lanes.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self.abandoned = [a for b in self._backlog.values() for a in b]
        self._backlog.clear()
        self.abandoned += _drain(self._queue)
        self._unfinished = self._sending = 0
        self.abandoned.sort(key=lambda a: a.at)
        lost = len(self.abandoned)
        if lost:
            self.failed += lost
            logger.error("%d alert(s) not delivered before shutdown", lost)
        if self._publish_queue is not None:
            unpublished = len(_drain(self._publish_queue)) + publishing
            if unpublished:
                self.publish_failed += unpublished
                logger.error("%d alert(s) not published before shutdown", unpublished)

    async def __aenter__(self) -> AlertDispatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based).

        Exponential from ``base_delay``, capped at ``max_delay``, jittered down by up to
        half so that several workers do not retry in step; never shorter than the
        server's ``retry_after``, which is honoured even above ``max_delay``.
        """
        delay = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)
        return max(delay, retry_after or 0.0)

    async def _notify_lane(self) -> None:
        """Route each alert to its key's lane (started when the key has none)."""
        while True:
            alert = await self._queue.get()
            key = alert.key
            backlog = self._backlog.get(key)
            if backlog is None:
                backlog = self._backlog[key] = deque()
            backlog.append(alert)
            if key not in self._lanes:
                self._lanes[key] = asyncio.create_task(self._key_lane(key, backlog),
                                                       name="alerts-key")

    async def _key_lane(self, key: str, backlog: deque[Alert]) -> None:
        """Deliver one key's alerts in order, then end (a key rarely has a second)."""
        try:
            while backlog:
                await self._deliver(backlog[0])
                backlog.popleft()
                self._unfinished -= 1
                self._queue.task_done()
        finally:
            if not backlog:
                self._backlog.pop(key, None)
            self._lanes.pop(key, None)

    async def _deliver(self, alert: Alert) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await self._send(alert)
            except NotifyError as e:
                if not e.retryable:
                    self.failed += 1
                    logger.error("alert %r not delivered: %s", alert.key, e)
                    return
                if attempt == self.max_attempts:
                    self.failed += 1
                    logger.error(
                        "alert %r not delivered after %d attempts: %s", alert.key, attempt, e
                    )
                    return
                delay = self.backoff(attempt, e.retry_after)
                logger.warning(
                    "alert %r: attempt %d/%d failed (%s); retrying in %.2fs",
                    alert.key,
                    attempt,
                    self.max_attempts,
                    e,
                    delay,
                )
                self.retries += 1
                await asyncio.sleep(delay)
            except Exception:
                # A notifier that breaks its contract must not kill the lane for good.
                self.failed += 1
                logger.exception("alert %r not delivered: the notifier crashed", alert.key)
                return
            else:
                self.sent += 1
                return

    async def _send(self, alert: Alert) -> None:
        """One attempt, in one of ``concurrency`` slots (a backoff holds none)."""
        async with self._slots:
            self._sending += 1
            try:
                await self.notifier.send(alert)
            finally:
                self._sending -= 1

    async def _publish_lane(self) -> None:
        assert self._publish_queue is not None and self._publish is not None
        while True:
            alert = await self._publish_queue.get()
            self._publishing = alert
            try:
                await self._publish(alert)
            except Exception:
                self.publish_failed += 1
                logger.exception("alert %r not published to the alert topic", alert.key)
            finally:
                self._publishing = None
                self._publish_queue.task_done()


def _drain(queue: asyncio.Queue[Alert]) -> list[Alert]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
        queue.task_done()
    return out
