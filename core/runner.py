"""Running the worker: topics first, then a faust worker in the foreground."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import TYPE_CHECKING, Any

from spendstream.domain.budgets import Budgets
from spendstream.kafka_auth import kafka_client_kwargs
from spendstream.settings import Settings

if TYPE_CHECKING:
    from pydantic import SecretStr

    from spendstream.alerts import Notifier
    from spendstream.ledger.consumer import LedgerConsumer

log = logging.getLogger("spendstream.worker")

GC_THRESHOLD = 50_000
"""Allocations between two young-generation collections (Python's default: 700). An event
makes a few dozen short-lived objects; at the default the collector ran every few events
and re-scanned faust's long-lived graph: 20-25% of the hot path, measured."""


def build_notifier_from(settings: Settings) -> Notifier:
    """The Slack notifier the settings ask for (webhook wins), else the log notifier."""
    from spendstream.alerts import build_notifier

    def plain(secret: SecretStr | None) -> str | None:
        return None if secret is None else secret.get_secret_value()

    return build_notifier(plain(settings.slack_webhook_url), plain(settings.slack_bot_token),
                          settings.slack_channel, settings.slack_api_url)


def ledger_consumer(settings: Settings, budgets: Budgets) -> LedgerConsumer:
    """The ledger's consumer as the settings describe it (``database_url`` must be set)."""
    from spendstream.ledger.consumer import LedgerConsumer

    assert settings.database_url is not None
    return LedgerConsumer(
        settings.database_url.get_secret_value(), settings.bootstrap_servers, settings.topic,
        settings.ledger_group, budgets, kafka_kwargs=kafka_client_kwargs(settings),
        status_interval=settings.status_interval,
        max_future_seconds=settings.max_future_seconds)


def ledger_services(settings: Settings, budgets: Budgets, registry: Any = None) -> list[Any]:
    """The spend ledger's service when ``SPENDSTREAM_DATABASE_URL`` is set, else nothing
    (and psycopg is never imported); its metrics join ``registry`` (the worker's)."""
    if settings.database_url is None:
        return []
    from spendstream.ledger.metrics import LedgerCollector
    from spendstream.ledger.service import LedgerService

    consumer = ledger_consumer(settings, budgets)
    if registry is not None:
        registry.register(LedgerCollector(consumer.stats))
    return [LedgerService(consumer)]


def digest_services(settings: Settings, budgets: Budgets, notifier: Notifier) -> list[Any]:
    """The weekly digest's service when ``SPENDSTREAM_DIGEST_AT`` is set (it needs the
    ledger), else nothing."""
    if settings.digest_at is None:
        return []
    from spendstream.errors import ConfigError

    if settings.database_url is None:
        raise ConfigError("SPENDSTREAM_DIGEST_AT needs the spend ledger: set "
                          "SPENDSTREAM_DATABASE_URL too (or unset SPENDSTREAM_DIGEST_AT)")
    from spendstream.dashboard.digest_service import DigestService

    return [DigestService(settings.digest_at, settings.database_url.get_secret_value(),
                          settings.redis_url.get_secret_value(), settings.redis_prefix,
                          budgets, notifier)]  # type: ignore[arg-type]


def run_ledger(settings: Settings, budgets: Budgets, loglevel: str = "info") -> int:
    """The ledger's consumer alone in this process until SIGINT/SIGTERM (``spendstream
    ledger run``): the ledger scaled out of the worker, one or more processes in its group.

    A Kafka failure (the broker unreachable at start) restarts the consumer from its
    committed offsets after 5 s, as the worker's ledger thread does."""
    import signal

    from spendstream.errors import ConfigError

    if settings.database_url is None:
        raise ConfigError("no ledger database: set SPENDSTREAM_DATABASE_URL to a "
                          "postgresql:// URL, see docs/ledger.md")
    logging.basicConfig(format="[%(asctime)s] [%(levelname)s] %(message)s",
                        level=getattr(logging, loglevel.upper()))
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.root.level))
    consumer = ledger_consumer(settings, budgets)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            try:
                await consumer.run(stop)
            except Exception:
                log.exception("ledger: consumer failed; restarting in 5s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5.0)

    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    log.info("ledger process starting: topic %s, group %s", settings.topic,
             settings.ledger_group)
    asyncio.run(main())
    s = consumer.stats
    log.info("ledger process stopped: rows %d (new %d), batches %d", s.rows, s.written,
             s.batches)
    return 0


def run_worker(settings: Settings, budgets: Budgets, loglevel: str = "info",
               ledger: bool = True) -> int:
    """Create the topics, then run both stages until SIGINT/SIGTERM; return the exit code.

    ``ledger=False`` leaves the spend ledger to ``spendstream ledger run`` processes."""
    import faust

    from spendstream.streams.app import build_app
    from spendstream.streams.credentials import faust_credentials
    from spendstream.streams.topics import ensure_topics

    notifier = build_notifier_from(settings)
    digest = digest_services(settings, budgets, notifier)  # a bad schedule fails here
    counts = asyncio.run(ensure_topics(
        settings.bootstrap_servers,
        [settings.topic, settings.rollup_topic, settings.dlq_topic, settings.alert_topic,
         settings.handover_topic],
        settings.partitions, settings.replication_factor, **kafka_client_kwargs(settings)))
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = build_app(settings, budgets, notifier, partitions=counts,
                    broker_credentials=faust_credentials(settings))
    gc.collect()
    gc.freeze()  # what start-up built lives as long as the process: never scan it again
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    services = ledger_services(settings, budgets,
                               app.spendstream["registry"]  # type: ignore[attr-defined]
                               ) if ledger else []
    worker = faust.Worker(app, *services, *digest, loglevel=loglevel, quiet=True)
    worker.spinner = None  # a terminal spinner mangles logs and files
    logging.getLogger("spendstream").setLevel(logging.INFO)
    log.info("worker starting: kafka %s (%s), topic %s (%d partitions), redis prefix %r, "
             "alerts via %s, ledger %s", settings.kafka_url, settings.kafka_security_protocol,
             settings.topic, settings.partitions, settings.redis_prefix, type(notifier).__name__,
             "off (spendstream ledger run writes it)" if settings.database_url and not ledger
             else "on" if settings.database_url else "off (SPENDSTREAM_DATABASE_URL unset)")
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        return int(e.code or 0)
    return 0
