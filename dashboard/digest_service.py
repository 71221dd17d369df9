"""The weekly digest inside ``spendstream worker``: at each ``SPENDSTREAM_DIGEST_AT`` time
(e.g. ``mon 09:00`` UTC) one worker of the group posts the digest through the alert
notifier (Slack, or the log without Slack settings).

Every worker of a group runs this service; a ``SET NX`` on ``digest:{time}`` in Redis lets
exactly one of them send each digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from mode import Service
from redis.exceptions import RedisError

from spendstream.alerts.notifier import NotifyError, TextNotifier
from spendstream.dashboard.digest import build, next_run, parse_schedule, render
from spendstream.domain.budgets import Budgets

log = logging.getLogger("spendstream.digest")
ATTEMPTS = 5


class DigestService(Service):
    """Sends the digest on schedule; :meth:`send_once` sends one now."""

    def __init__(self, schedule: str, database_url: str, redis_url: str, prefix: str,
                 budgets: Budgets, notifier: TextNotifier,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.schedule = parse_schedule(schedule)
        self.database_url = database_url
        self.redis_url = redis_url
        self.prefix = prefix
        self.budgets = budgets
        self.notifier = notifier
        self.now = clock
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._task = asyncio.create_task(self._run_schedule(), name="spendstream-digest")

    async def on_stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run_schedule(self) -> None:
        while True:
            at = next_run(self.schedule, self.now())
            log.info("weekly digest: next at %s", at.isoformat())
            while (wait := (at - self.now()).total_seconds()) > 0:
                await asyncio.sleep(min(wait, 60.0))
            try:
                await self.send_once(at)
            except Exception:  # one failed digest must not end the schedule
                log.exception("weekly digest of %s not sent", at.isoformat())
            await asyncio.sleep(1.0)  # past ``at``: the next run is a week on

    async def send_once(self, at: datetime) -> bool:
        """Build and send the digest for ``at`` unless another worker claimed it; return
        whether this worker sent it."""
        if not await self._claim(at):
            return False
        text = await asyncio.to_thread(self._text, at)
        for attempt in range(ATTEMPTS):
            try:
                await self.notifier.send_text(text)
                self.sent += 1
                return True
            except NotifyError as e:
                if not e.retryable or attempt == ATTEMPTS - 1:
                    raise
                await asyncio.sleep(e.retry_after or 2.0 ** attempt)
        return False

    def _text(self, at: datetime) -> str:
        from spendstream.ledger.queries import connect

        with connect(self.database_url, read_only=True) as conn:
            return render(build(conn, self.budgets, at))

    async def _claim(self, at: datetime) -> bool:
        client = aioredis.from_url(self.redis_url, socket_timeout=3)
        try:
            return bool(await client.set(f"{self.prefix}digest:{at:%Y-%m-%dT%H:%M}Z", b"1",
                                         nx=True, ex=int(timedelta(days=8).total_seconds())))
        except (RedisError, OSError) as e:
            log.warning("weekly digest: Redis unreachable (%s); sending without the claim",
                        type(e).__name__)
            return True
        finally:
            await client.aclose()
