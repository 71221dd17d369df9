"""The faust application: two agents over the usage and rollup topics, and the sinks.

Wiring only: the logic lives in ``stages.py`` over ports; here faust tables become
:class:`StateStore` s, Redis becomes the flag store and Slack the alert notifier.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import orjson
from faust.types import TableT
from mode import Service

from spendstream.alerts import AlertDispatcher, Notifier
from spendstream.alerts.model import Alert
from spendstream.producers.budgets import Budgets
from spendstream.producers.event import MalformedEvent, decode_event
from spendstream.producers.pricing import Pricer
from spendstream.settings import Settings
from spendstream.streams.flags import RedisFlagSink
from spendstream.streams.rollup_stage import RollupStage
from spendstream.streams.stages import GLOBAL, Counters, Entry
from spendstream.streams.user_stage import UserStage

log = logging.getLogger("spendstream.worker")

BATCH = 2000
SWEEP_EVERY = 300.0


class TableState:
    """A faust table as a :class:`~spendstream.streams.stages.StateStore`.

    Writes name their changelog partition explicitly (the source event's), so batches
    can be folded outside faust's per-event context and each key is logged once per batch.
    """

    def __init__(self, table: TableT[str, dict[str, Any]]) -> None:
        self.table = table

    def get(self, key: str) -> dict[str, Any] | None:
        """The current value, or ``None``."""
        return self.table.data.get(key)

    def put(self, partition: int, key: str, value: dict[str, Any] | None) -> None:
        """Store and log to the changelog; ``None`` is a delete (tombstone)."""
        if value is None:
            self.table.data.pop(key, None)
            self.table.send_changelog(partition, key, None, value_serializer="raw")
        else:
            self.table.data[key] = value
            self.table.send_changelog(partition, key, value)

    def scan(self) -> Iterable[tuple[str, dict[str, Any]]]:
        """A snapshot of every key held here."""
        return list(self.table.data.items())


def utcnow() -> datetime:
    """Wall-clock now in UTC: the reference for grace periods."""
    return datetime.now(UTC)


def build_app(settings: Settings, budgets: Budgets, notifier: Notifier,
              pricer: Pricer | None = None, partitions: dict[str, int] | None = None,
              **faust_options: Any) -> faust.App:
    """A configured faust app running both stages; start it with a faust ``Worker``.

    ``partitions`` gives the actual partition counts of the usage and rollup topics (as
    found by :func:`ensure_topics`): each table's changelog must match its source topic.
    """
    counts = partitions or {}
    n = counts.get(settings.topic) or settings.partitions
    n_rollup = counts.get(settings.rollup_topic) or n
    settings.state_dir.mkdir(parents=True, exist_ok=True)  # faust's datadir lives here
    app = faust.App(
        settings.app_id,
        broker=settings.kafka_url,
        store="memory://",
        topic_partitions=n,
        topic_replication_factor=settings.replication_factor,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=5.0,
        broker_session_timeout=settings.session_timeout,
        datadir=str(settings.state_dir / "{conf.name}"),
        broker_heartbeat_interval=1.0,
        producer_acks=-1,
        table_standby_replicas=0,
        **faust_options,
    )
    usage = app.topic(settings.topic, key_serializer="raw", value_serializer="raw",
                      partitions=n)
    rollup = app.topic(settings.rollup_topic, key_serializer="raw", value_serializer="raw",
                       partitions=n_rollup)
    dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
    alert_topic = app.topic(settings.alert_topic, key_serializer="raw", value_serializer="raw")
    ledger = app.Table("ledger", partitions=n)  # json keys and values
    rollups = app.Table("rollup", partitions=n_rollup)

    flags = RedisFlagSink(settings.redis_url.get_secret_value(), settings.redis_prefix,
                          settings.flush_interval)

    async def publish(alert: Alert) -> None:
        await alert_topic.send(key=alert.key.encode(), value=orjson.dumps(alert.to_dict()))

    dispatcher = AlertDispatcher(notifier, publish=publish)
    counters = Counters()
    grace = timedelta(seconds=settings.grace_seconds)
    users = UserStage(budgets, pricer or Pricer(budgets.prices), TableState(ledger), flags,
                      dispatcher.submit, grace, counters)
    features = RollupStage(budgets, TableState(rollups), flags, dispatcher.submit, grace,
                           counters)
    app.spendstream = {"counters": counters, "flags": flags,  # type: ignore[attr-defined]
                       "dispatcher": dispatcher}

    @app.service
    class Sinks(Service):
        """Starts the Redis flag sink and the alert dispatcher with the worker."""

        async def on_start(self) -> None:
            flags.start()
            await dispatcher.start()

        async def on_stop(self) -> None:
            await dispatcher.stop()
            await flags.stop()

    async def dead_letter(ev: faust.types.EventT, reason: str) -> None:
        """The original key and bytes to the DLQ, with why and where they came from."""
        counters.dead_letters += 1
        m = ev.message
        await dlq.send(key=ev.key, value=ev.value, headers={
            "x-spendstream-reason": reason.encode(),
            "x-spendstream-source": f"{m.topic}/{m.partition}/{m.offset}".encode()})

    @app.agent(usage, name="users")
    async def user_agent(stream: faust.StreamT) -> None:
        # take_events exists on faust's Stream but is missing from its StreamT interface.
        async for events in stream.take_events(  # type: ignore[attr-defined]
                BATCH, within=settings.flush_interval):
            now = utcnow()
            forward: dict[tuple[int, str], list[Entry]] = defaultdict(list)
            for ev in events:
                p, off = ev.message.partition, ev.message.offset
                try:
                    event = decode_event(ev.value)
                except MalformedEvent as e:
                    await dead_letter(ev, e.reason)
                    continue
                entry = users.process(p, off, event, now)
                if entry is not None:
                    forward[(p, event.feature)].append(entry)
                    forward[(p, GLOBAL)].append(entry)
            users.finish(now)
            for (p, key), entries in forward.items():
                await rollup.send(key=key.encode(), value=orjson.dumps(
                    {"p": p, "e": [e.to_wire() for e in entries]}))
            flags.kick()

    @app.agent(rollup, name="rollup")
    async def rollup_agent(stream: faust.StreamT) -> None:
        # take_events exists on faust's Stream but is missing from its StreamT interface.
        async for events in stream.take_events(  # type: ignore[attr-defined]
                BATCH, within=settings.flush_interval):
            now = utcnow()
            for ev in events:
                try:  # internal topic, but a stray producer must not crash-loop the agent
                    key = ev.key.decode()
                    body = orjson.loads(ev.value)
                    source = int(body["p"])
                    entries = [Entry.from_wire(key, row) for row in body["e"]]
                except (AttributeError, ValueError, TypeError, KeyError, ArithmeticError) as e:
                    await dead_letter(ev, f"malformed rollup message: {e!r}")
                    continue
                features.process(ev.message.partition, key, source, entries, now)
            features.finish(now)
            flags.kick()

    @app.timer(settings.status_interval)
    async def status() -> None:
        c = counters
        log.info("status: events %d, duplicates %d, late %d, dead letters %d, unpriced %d, "
                 "alerts %d (sent %d, failed %d), flag writes %d pending %d%s",
                 c.events, c.duplicates, c.late, c.dead_letters, c.unpriced, c.alerts,
                 dispatcher.sent, dispatcher.failed, flags.stats.written, flags.pending,
                 "" if flags.healthy else ", REDIS DOWN")

    @app.timer(SWEEP_EVERY)
    async def sweep() -> None:
        now = utcnow()
        users.sweep(now)
        features.sweep(now)

    return app
