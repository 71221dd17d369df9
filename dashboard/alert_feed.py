"""The alert feed: the worker's alert topic (``<topic>.alerts``) read from its start by a
consumer of no group, keeping the newest :data:`KEEP` alerts in memory.

The topic is the record the worker already keeps of every alert (budget, pace, spike,
unpriced models, token drift), Slack or not; the dashboard stores nothing of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import orjson

log = logging.getLogger("spendstream.dashboard")

KEEP = 500
"""Alerts held: the feed is for what happened lately, the topic keeps the rest."""


class AlertFeed:
    """Reads the alert topic in the background; :meth:`latest` is the newest first."""

    def __init__(self, bootstrap: str, topic: str, kafka_kwargs: dict[str, Any] | None = None,
                 keep: int = KEEP) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.kafka_kwargs = kafka_kwargs or {}
        self._alerts: deque[dict[str, Any]] = deque(maxlen=keep)
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = None
        self.read = 0

    def latest(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` alerts, newest first."""
        return list(self._alerts)[::-1][:limit]

    def add(self, raw: bytes | None) -> None:
        """Keep one record's alert (a record that is not an alert object is skipped)."""
        try:
            value = orjson.loads(raw or b"")
        except orjson.JSONDecodeError:
            return
        if isinstance(value, dict):
            self._alerts.append(value)
            self.read += 1

    async def start(self) -> None:
        """Start reading in the background."""
        self._task = asyncio.create_task(self._run(), name="spendstream-alert-feed")

    async def stop(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        while True:
            consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.bootstrap,
                                        group_id=None, auto_offset_reset="earliest",
                                        # a topic the worker creates after this start
                                        # is found within seconds, not aiokafka's 5 min
                                        metadata_max_age_ms=10_000, **self.kafka_kwargs)
            try:
                await consumer.start()
                self.error = None
                while True:
                    batches = await consumer.getmany(timeout_ms=500)
                    for records in batches.values():
                        for r in records:
                            self.add(r.value)
            except (KafkaError, OSError) as e:
                self.error = f"alert topic {self.topic} unreadable ({type(e).__name__}: {e})"
                log.warning("dashboard: %s; retrying in 5s", self.error)
                self._alerts.clear()  # re-read from the start: no duplicates
                self.read = 0
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
            await asyncio.sleep(5)
