"""Running the worker: topics first, then a faust worker in the foreground."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import TYPE_CHECKING, Any

from spendstream.domain.budgets import Budgets
from spendstream.kafka_auth import kafka_client_kwargs
from spendstream.settings import Settings

if TYPE_CHECKING:
    from pydantic import SecretStr

    from spendstream.alerts import Notifier

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


def ledger_services(settings: Settings, budgets: Budgets, registry: Any = None) -> list[Any]:
    """The spend ledger's service when ``SPENDSTREAM_DATABASE_URL`` is set, else nothing
    (and psycopg is never imported); its metrics join ``registry`` (the worker's)."""
    if settings.database_url is None:
        return []
    from spendstream.ledger.consumer import LedgerConsumer
    from spendstream.ledger.metrics import LedgerCollector
    from spendstream.ledger.service import LedgerService

    consumer = LedgerConsumer(
        settings.database_url.get_secret_value(), settings.bootstrap_servers, settings.topic,
        settings.ledger_group, budgets, kafka_kwargs=kafka_client_kwargs(settings),
        status_interval=settings.status_interval,
        max_future_seconds=settings.max_future_seconds)
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


def run_worker(settings: Settings, budgets: Budgets, loglevel: str = "info") -> int:
    """Create the topics, then run both stages until SIGINT/SIGTERM; return the exit code."""
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
    ledger = ledger_services(settings, budgets,
                             app.spendstream["registry"])  # type: ignore[attr-defined]
    worker = faust.Worker(app, *ledger, *digest, loglevel=loglevel, quiet=True)
    worker.spinner = None  # a terminal spinner mangles logs and files
    logging.getLogger("spendstream").setLevel(logging.INFO)
    log.info("worker starting: kafka %s (%s), topic %s (%d partitions), redis prefix %r, "
             "alerts via %s, ledger %s", settings.kafka_url, settings.kafka_security_protocol,
             settings.topic, settings.partitions, settings.redis_prefix, type(notifier).__name__,
             "on" if settings.database_url else "off (SPENDSTREAM_DATABASE_URL unset)")
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        return int(e.code or 0)
    return 0
