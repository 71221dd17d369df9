"""Explicit topic creation: the broker may auto-create unknown topics with its own
partition count, which would break co-partitioning of the worker's state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from spendstream.errors import ServiceUnavailable

log = logging.getLogger("spendstream.topics")


CONNECT_TIMEOUT = 10.0
"""Seconds the worker waits for Kafka at start (a broker starting alongside it) before it
gives up with one line naming the URL."""


@contextlib.contextmanager
def _quiet_connects() -> Iterator[None]:
    """aiokafka logs every refused connection (about two a second): while the first
    connection is retried, only the final verdict is worth a line."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int,
                        replication: int = 1, timeout: float = CONNECT_TIMEOUT,
                        **client_kwargs: object) -> dict[str, int]:
    """Create the topics that do not exist; return each topic's partition count.

    A topic that exists with another partition count is reported, not altered: state
    keyed by partition cannot move silently. Raises :class:`ServiceUnavailable` when
    Kafka does not answer within ``timeout`` seconds.
    """
    names = list(names)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000,
                                **client_kwargs)
    deadline = asyncio.get_running_loop().time() + timeout
    with _quiet_connects():
        while True:
            try:
                await admin.start()
                break
            except KafkaError as e:
                if asyncio.get_running_loop().time() > deadline:
                    with contextlib.suppress(Exception):
                        await admin.close()
                    raise ServiceUnavailable(
                        f"Kafka at {bootstrap} did not answer within {timeout:g}s "
                        f"({type(e).__name__}); check SPENDSTREAM_KAFKA_URL") from e
                await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            # TopicAlreadyExistsError: another worker won the race.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(n, partitions, replication) for n in missing])
            log.info("created topics %s with %d partitions", ", ".join(missing), partitions)
        counts: dict[str, int] = {}
        for meta in await admin.describe_topics(names):
            counts[meta["topic"]] = len(meta.get("partitions", []))
        for name, count in counts.items():
            if count and count != partitions:
                log.warning("topic %s has %d partitions, settings say %d; keeping %d",
                            name, count, partitions, count)
        return counts
    finally:
        await admin.close()
