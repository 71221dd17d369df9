"""The faust application: two batch loops over the usage and rollup topics, and the sinks.

Wiring only: the logic lives in ``stages.py`` over ports; here faust tables become
:class:`StateStore` s, Redis becomes the flag store and Slack the alert notifier.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import faust
from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP
from mode import Service

from spendstream.alerts import AlertDispatcher, Notifier, handover
from spendstream.contract.alert import Alert
from spendstream.contract.dead_letter import MAX_REQUEST_BYTES
from spendstream.contract.dead_letter import dead_letter as contract_dead_letter
from spendstream.domain.budgets import Budgets
from spendstream.domain.pricing import Pricer
from spendstream.kafka_auth import kafka_client_kwargs
from spendstream.settings import Settings
from spendstream.streams.batches import Record, RollupBatches, UserBatches, recover
from spendstream.streams.consumer import TableManager, WorkerApp
from spendstream.streams.feed import BatchFeed, Chunk
from spendstream.streams.flags import RedisFlagSink
from spendstream.streams.grants import GRANT
from spendstream.streams.membership import PreviousMember
from spendstream.streams.memory import trim as trim_memory
from spendstream.streams.observe import BatchTimer, Health, ObservabilityServer, Sources
from spendstream.streams.rollup_stage import RollupStage
from spendstream.streams.stages import Counters
from spendstream.streams.state import BatchedState
from spendstream.streams.user_stage import UserStage

log = logging.getLogger("spendstream.worker")

BATCH = 2000
"""Kafka records per batch at most (a packed record holds up to 500 events from the SDK):
a batch is whatever was fetched since the last one began, never waited for."""
FEED_BYTES = 8 * 1024 * 1024
"""Fetched bytes a topic's feed holds before fetching waits for the worker: two fetches
of 1 MiB from each of four partitions."""
SWEEP_EVERY = 300.0


class LogTable(faust.Table):  # type: ignore[type-arg]
    """A faust table used only as the changelog of a :class:`BatchedState`.

    faust still owns what it is good at (the changelog topic, recovery on assignment,
    consumer-group membership); the values live in the state, and recovered records are
    handed to it. Revoked partitions are dropped: their new owner restores them.
    """

    aggregates: BatchedState
    source_topic: str
    fresh: set[int]
    """Partitions assigned since their last batch: their partials are resent once."""

    def bind(self, state: BatchedState, source_topic: str) -> LogTable:
        """Attach the state this table logs (and recovers) for ``source_topic``."""
        self.aggregates = state
        self.source_topic = source_topic
        self.fresh = set()
        return self

    def changelog(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Send one changelog record (``None``: tombstone) to ``partition``."""
        self.send_changelog(partition, key, value)

    def apply_changelog_batch(self, batch: Iterable[faust.types.EventT[bytes]]) -> None:
        recover(self.aggregates, ((ev.message.partition, ev.message.key, ev.message.value)
                                  for ev in batch))

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP],
                           generation_id: int = 0) -> None:
        for tp in revoked:
            if tp.topic == self.source_topic:
                self.aggregates.drop(tp.partition)
                self.fresh.discard(tp.partition)
        self.fresh.update(tp.partition for tp in newly_assigned
                          if tp.topic == self.source_topic)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)


def _log_table(app: faust.App, name: str, partitions: int, state_factory: Any,
               source_topic: str) -> LogTable:
    table = LogTable(app, name=name, beacon=app.tables.beacon, partitions=partitions,
                     key_type=bytes, value_type=bytes)
    app.tables.add(table)
    return table.bind(state_factory(table), source_topic)


def records(chunks: Iterable[Chunk]) -> list[Record]:
    """A feed's batch as :class:`Record` s (each keeps its Kafka record, for the DLQ)."""
    return [Record(r.partition, r.offset, r.value, r) for _, recs in chunks for r in recs]


async def run_feed(app: WorkerApp, feed: BatchFeed,
                   count: Callable[[list[Record], datetime], Awaitable[None]],
                   timer: BatchTimer | None = None) -> None:
    """Count the feed's batches for good: each is marked counted (committable) only once
    ``count`` returned. A batch that raises (a lost broker, a bug) is retried, never
    skipped, with the error logged: its records are neither counted twice nor committed
    unseen (dedup absorbs what a retry folds again)."""
    while True:
        chunks = await feed.take(BATCH)
        batch = records(chunks)
        failures = 0
        try:
            while True:
                started = time.perf_counter()
                try:
                    await count(batch, utcnow())
                    break
                except Exception:
                    failures += 1
                    log.exception("could not count a batch of %d record(s) of %s (attempt "
                                  "%d); trying again", len(batch), feed.topic, failures)
                    await asyncio.sleep(min(5.0, 0.25 * 2 ** failures))
        except BaseException:
            feed.abandon()
            raise
        feed.finished(chunks)
        app.consumer.note_progress(tp for tp, _ in chunks)  # type: ignore[attr-defined]
        if timer is not None:
            timer.observe(time.perf_counter() - started)


def utcnow() -> datetime:
    """Wall-clock now in UTC: the reference for grace periods."""
    return datetime.now(UTC)


def consumer_lag(app: WorkerApp, topic: str) -> dict[int, int]:
    """Records of ``topic`` behind each assigned partition's high watermark (as the last
    fetch response reported it) that the worker has not read yet."""
    consumer = app.consumer
    read = app.feeds[topic].read
    lag: dict[int, int] = {}
    for tp in consumer.assignment():
        if tp.topic != topic:
            continue
        high = consumer.highwater(tp)
        last = read.get(tp)
        if high is not None:
            lag[tp.partition] = max(0, high - (last + 1 if last is not None else 0))
    return lag


def worker_health(app: faust.App, topic: str) -> Health:
    """Ready while partitions of ``topic`` are assigned, recovered and not rebalancing."""
    try:
        consumer = app.consumer
    except Exception:  # before faust built its consumer
        return Health(False, "starting")
    partitions = tuple(sorted(tp.partition for tp in consumer.assignment() if tp.topic == topic))
    if app.rebalancing:
        return Health(False, "rebalancing", partitions)
    if not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
        return Health(False, "recovering state", partitions)
    if not partitions:
        return Health(False, f"no partition of {topic} assigned (more workers than "
                      "partitions?)", partitions)
    return Health(True, "counting", partitions)


def current_spend(live: Mapping[str, tuple[Decimal, Decimal | None, int]]
                  ) -> dict[str, tuple[Decimal, Decimal | None]]:
    """Each feature's spend and budget in its period, if that period has not ended."""
    now = time.time()
    return {f: (usd, budget) for f, (usd, budget, end) in live.items() if end > now}


def _worker_app(settings: Settings, partitions: int, **faust_options: Any) -> WorkerApp:
    """The faust app with the worker's settings (in-memory tables, acks=all, ...)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)  # faust's datadir lives here
    return WorkerApp(
        settings.app_id,
        broker=settings.kafka_url,
        store="memory://",
        topic_partitions=partitions,
        topic_replication_factor=settings.replication_factor,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=5.0,
        broker_session_timeout=settings.session_timeout,
        consumer_group_instance_id=settings.group_instance_id,
        datadir=str(settings.state_dir / "{conf.name}"),
        TableManager=TableManager,
        broker_heartbeat_interval=1.0,
        producer_acks=-1,
        table_standby_replicas=0,
        # A DLQ message (contract/dead_letter.py) must fit; faust's default is 1,000,000.
        producer_max_request_size=MAX_REQUEST_BYTES,
        **faust_options,
    )


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
    app = _worker_app(settings, n, **faust_options)
    if settings.group_instance_id is None:  # a static member is the same member anyway
        app.previous_member = PreviousMember(
            settings.state_dir / f"{settings.app_id}.member.json")
    usage = app.topic(settings.topic, key_serializer="raw", value_serializer="raw",
                      partitions=n)
    rollup = app.topic(settings.rollup_topic, key_serializer="raw", value_serializer="raw",
                       partitions=n_rollup)
    usage_feed, rollup_feed = app.feed(usage, FEED_BYTES), app.feed(rollup, FEED_BYTES)
    dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
    alert_topic = app.topic(settings.alert_topic, key_serializer="raw", value_serializer="raw")
    horizon = float(settings.dedup_seconds)
    ledger = _log_table(app, "ledger", n,
                        lambda t: BatchedState(t.changelog, horizon, tracked=(GRANT,)),
                        settings.topic)
    rollups = _log_table(app, "rollup", n_rollup, lambda t: BatchedState(t.changelog, horizon),
                         settings.rollup_topic)

    flags = RedisFlagSink(settings.redis_url.get_secret_value(), settings.redis_prefix,
                          settings.flush_interval)

    async def publish(alert: Alert) -> None:
        await alert_topic.send(key=alert.key.encode(), value=alert.encode())

    dispatcher = AlertDispatcher(notifier, publish=publish)
    kafka = kafka_client_kwargs(settings)
    counters = Counters()
    grace = timedelta(seconds=settings.grace_seconds)
    users = UserStage(budgets, pricer or Pricer(budgets.prices), ledger.aggregates, flags,
                      dispatcher.submit, grace, counters)
    features = RollupStage(budgets, rollups.aggregates, flags, dispatcher.submit, grace, counters)

    def republish() -> None:
        """Redis may have lost its data: every live spend key again, from the state."""
        now = utcnow()
        log.warning("writing %d user and %d feature/global spend keys again",
                    users.republish(now), features.republish(now))

    flags.on_recover = republish

    batches = BatchTimer()
    observed = ObservabilityServer(Sources(
        counters, flags, dispatcher, batches, lag=lambda: consumer_lag(app, settings.topic),
        feature_spend=lambda: current_spend(features.live),
        health=lambda: worker_health(app, settings.topic)), settings.metrics_port)
    app.spendstream = {"counters": counters, "flags": flags,  # type: ignore[attr-defined]
                       "dispatcher": dispatcher, "registry": observed.registry}

    @app.service
    class Sinks(Service):
        """Starts the Redis flag sink, the alert dispatcher and /metrics with the worker."""

        async def on_start(self) -> None:
            flags.start()
            await dispatcher.start()
            if settings.metrics_port:
                await observed.start()
            try:
                undelivered = await handover.take(settings.bootstrap_servers,
                                                  settings.handover_topic, **kafka)
            except Exception:
                log.exception("could not read the alerts the last run left undelivered")
                return
            for alert in undelivered:
                dispatcher.resume(alert)
            if undelivered:
                log.warning("%d alert(s) the last run did not deliver: delivering them now",
                            len(undelivered))

        async def on_stop(self) -> None:
            await observed.stop()
            await dispatcher.stop()
            if dispatcher.abandoned:
                try:
                    n = await handover.release(settings.bootstrap_servers,
                                               settings.handover_topic, dispatcher.abandoned,
                                               **kafka)
                    log.warning("%d undelivered alert(s) handed over to the next run", n)
                except Exception:
                    log.exception("could not hand %d undelivered alert(s) over to the next "
                                  "run", len(dispatcher.abandoned))
            await flags.stop()

    async def dead_letter(record: Record, reason: str, element: bytes | None = None) -> None:
        """The original key and bytes to the DLQ, with why and where they came from (a bad
        element of a packed record goes alone, its good neighbours are counted).

        A send that fails raises: the batch is then retried, never committed with this
        record neither counted nor dead-lettered. A record too big to produce again goes
        cut (``contract/dead_letter.py``), so no record can fail this for good."""
        m = record.source  # the Kafka record (aiokafka's ConsumerRecord)
        key, value, headers = contract_dead_letter(
            m.key, m.value if element is None else element, reason,
            f"{m.topic}/{m.partition}/{m.offset}")
        await dlq.send(key=key, value=value, headers=headers)
        counters.dead_letters += 1

    async def forward(key: bytes, value: bytes, partition: int | None) -> None:
        await rollup.send(key=key, value=value, partition=partition)

    partitioner, rollup_partitions = DefaultPartitioner(), list(range(n_rollup))

    def route(key: str) -> int:
        """Where the producer puts a message with this key (so grouping moves no window)."""
        return int(partitioner(key.encode(), rollup_partitions, rollup_partitions))

    user_batches = UserBatches(users, ledger.aggregates, ledger.fresh, forward, dead_letter,
                               flags.kick, topic=settings.topic,
                               max_future_seconds=settings.max_future_seconds, route=route)
    rollup_batches = RollupBatches(features, dead_letter, flags.kick)

    @app.task  # type: ignore[untyped-decorator]
    async def count_users() -> None:
        await run_feed(app, usage_feed, user_batches.process, batches)

    @app.task  # type: ignore[untyped-decorator]
    async def count_rollups() -> None:
        await run_feed(app, rollup_feed, rollup_batches.process)

    @app.timer(settings.status_interval)  # type: ignore[untyped-decorator]
    async def status() -> None:
        trim_memory()  # batches' buffers are freed, but glibc keeps the pages without this
        c = counters
        log.info("status: events %d, duplicates %d, late %d, dead letters %d, unpriced %d, "
                 "alerts %d (sent %d, failed %d), flag writes %d pending %d%s",
                 c.events, c.duplicates, c.late, c.dead_letters, c.unpriced, c.alerts,
                 dispatcher.sent, dispatcher.failed, flags.stats.written, flags.pending,
                 "" if flags.healthy else ", REDIS DOWN")

    @app.timer(SWEEP_EVERY)  # type: ignore[untyped-decorator]
    async def sweep() -> None:
        now = utcnow()
        users.sweep(now)
        features.sweep(now)

    return app
