"""What the fault tests share: a worker process at a chosen log level, a publisher, the
documented Redis keys read back as Decimal, and a ledger of what was published.

The worker is a black box here: it is driven through ``spendstream worker`` (a child
process), the usage topic, ``<topic>.dlq`` / ``<topic>.alerts`` and the README's Redis keys.
Each test builds its own :class:`Stack` from the ``uid`` fixture, so topics, consumer group,
state directory and key prefix are its own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import redis

from spendstream.contract.keys import spend
from spendstream.streams.topics import ensure_topics
from tests.helpers import (
    WorkerProcess,
    metric,
    read_topic,
    scrape,
    send_in_order,
    worker_env,
)

Message = tuple[bytes | None, bytes | None]
KINDS = ("global", "feature", "user")

COUNTERS = {"events": "spendstream_events_counted_total",
            "duplicates": "spendstream_duplicates_total", "late": "spendstream_late_total",
            "dead_letters": "spendstream_dead_letters_total",
            "unpriced": "spendstream_unpriced_total", "alerts": "spendstream_alerts_total",
            "sent": "spendstream_alerts_sent_total", "failed": "spendstream_alerts_failed_total"}
"""The counters the fault tests read, by the names they use, and their /metrics samples."""


class Worker(WorkerProcess):
    """``spendstream worker`` as a child process, at ``log_level``; its counters are read
    from its ``/metrics`` (:meth:`status`), the way an operator's Prometheus reads them."""

    def __init__(self, env: dict[str, str], log: Path, log_level: str = "info",
                 module: str = "spendstream") -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.env = worker_env(env)
        self.metrics_port = int(self.env["SPENDSTREAM_METRICS_PORT"])
        self._last_metrics = ""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "worker", "--log-level", log_level],
            env=self.env, stdout=self._out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        """Everything the worker printed so far (also after :meth:`stop`)."""
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def metrics(self) -> str:
        """The worker's ``/metrics`` text now ("" while nothing answers on its port); the
        last answer is kept, so the counters stay readable after a kill or a stop."""
        code, text = scrape(self.metrics_port)
        if code == 200:
            self._last_metrics = text
        return text

    def status(self) -> dict[str, int]:
        """The worker's counters from ``/metrics`` (events, duplicates, late, dead letters,
        unpriced, alerts, alerts sent and failed; all 0 before it first answers)."""
        if self.proc.poll() is None:
            self.metrics()
        text = self._last_metrics
        return {name: int(metric(text, sample) or 0) if text else 0
                for name, sample in COUNTERS.items()}

    def ready(self) -> bool:
        """Whether the worker says it is counting (``spendstream_ready`` 1: it holds
        partitions and has recovered its state)."""
        return metric(self.metrics(), "spendstream_ready") == 1

    def redis_down(self) -> bool:
        """Whether the worker reports its flag writes failing (``spendstream_redis_up`` 0)."""
        return metric(self.metrics(), "spendstream_redis_up") == 0

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, nothing flushed, offsets not committed."""
        self.proc.kill()
        self.proc.wait(10)
        self._out.close()


@dataclass
class Stack:
    """One test's names and settings on the session's broker and a Redis server."""

    bootstrap: str
    kafka_url: str
    redis_url: str
    uid: str
    tmp: Path
    budgets: str
    partitions: int = 4
    extra: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)

    @property
    def topic(self) -> str:
        return f"t{self.uid}.usage"

    @property
    def prefix(self) -> str:
        return f"ss{self.uid}:"

    def env(self, name: str = "w", **extra: str) -> dict[str, str]:
        """The worker's environment; ``name`` picks its own state directory."""
        path = self.tmp / "budgets.yaml"
        path.write_text(self.budgets)
        return {"SPENDSTREAM_KAFKA_URL": self.kafka_url, "SPENDSTREAM_REDIS_URL": self.redis_url,
                "SPENDSTREAM_BUDGETS": str(path), "SPENDSTREAM_TOPIC": self.topic,
                "SPENDSTREAM_REDIS_PREFIX": self.prefix, "SPENDSTREAM_APP_ID": f"app{self.uid}",
                "SPENDSTREAM_PARTITIONS": str(self.partitions),
                "SPENDSTREAM_STATE_DIR": str(self.tmp / f"state-{name}"),
                "SPENDSTREAM_STATUS_INTERVAL": "1", "SPENDSTREAM_FLUSH_INTERVAL": "0.1",
                **self.extra, **extra}

    def worker(self, name: str = "w", log_level: str = "info", module: str = "spendstream",
               **extra: str) -> Worker:
        """Start a worker (stopped by :meth:`close`); ``module`` is what ``python -m``
        runs (a test's wrapper around the real CLI)."""
        w = Worker(self.env(name, **extra), self.tmp / f"{name}-{len(self.workers)}.log",
                   log_level, module)
        self.workers.append(w)
        return w

    def create_topics(self) -> None:
        """The usage topic with :attr:`partitions` partitions (apps create it first)."""
        asyncio.run(ensure_topics(self.bootstrap, [self.topic], self.partitions))

    def publish(self, messages: Iterable[Message], topic: str | None = None) -> None:
        """Send in order, waiting for each acknowledgement."""
        asyncio.run(send_in_order(self.bootstrap, topic or self.topic, list(messages)))

    def read(self, suffix: str, n: int, timeout: float = 30.0) -> list[Any]:
        """At least ``n`` records of ``<topic><suffix>`` (e.g. ``.dlq``), or all there are
        after ``timeout``."""
        return asyncio.run(read_topic(self.bootstrap, self.topic + suffix, n, timeout))

    def redis(self) -> Keys:
        return Keys(self.redis_url, self.prefix)

    def close(self) -> None:
        """Stop every worker still running; return nothing (tests assert exit codes)."""
        for w in self.workers:
            if w.proc.poll() is None:
                w.stop()
            elif not w._out.closed:
                w._out.close()


class Keys:
    """The README's Redis keys under one prefix, values decoded from JSON."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=2)
        self.prefix = prefix

    def get(self, key: str) -> dict[str, Any] | None:
        """The JSON value of ``<prefix><key>``, ``None`` when absent (or Redis is down)."""
        try:
            raw = self.client.get(self.prefix + key)
        except (redis.RedisError, OSError):
            return None
        return orjson.loads(raw) if raw else None

    def events(self, key: str) -> int:
        """The ``events`` field of a spend key (0 when absent)."""
        value = self.get(key)
        return int(value["events"]) if value else 0


def now_ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def usage(user: str, feature: str = "chat", cost: str | None = "0.001", **kw: Any
          ) -> dict[str, Any]:
    """A valid usage event as a dict (``cost`` ``None``: the worker prices the tokens)."""
    e: dict[str, Any] = {"schema": 1, "event_id": uuid.uuid4().hex, "ts": now_ts(),
                         "user_id": user, "feature": feature, "model": "gpt-4o",
                         "provider": "openai", "input_tokens": 100, "output_tokens": 20,
                         "status": "ok"}
    if cost is not None:
        e["cost_usd"] = cost
    e.update(kw)
    return e


def message(event: dict[str, Any]) -> Message:
    """The event on the wire: key = user id."""
    return str(event["user_id"]).encode(), orjson.dumps(event)


def send_usage(stack: Stack, ledger: Ledger, user: str, n: int, cost: str) -> None:
    """Publish ``n`` events of ``user`` costing ``cost`` each, recorded in ``ledger``."""
    events = [usage(user, cost=cost) for _ in range(n)]
    for e in events:
        ledger.add(e)
    stack.publish(message(e) for e in events)


class Ledger:
    """What was published, as the worker should count it (each ``event_id`` once)."""

    def __init__(self) -> None:
        self.usd: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        self.n: Counter[tuple[str, str]] = Counter()
        self.tokens: Counter[tuple[str, str]] = Counter()
        self.ids: set[str] = set()

    def add(self, event: dict[str, Any], cost: Decimal | None = None) -> bool:
        """Count one event published (``cost`` when it has no ``cost_usd``); False for a
        repeated ``event_id``, which must not count again."""
        if event["event_id"] in self.ids:
            return False
        self.ids.add(event["event_id"])
        usd = cost if cost is not None else Decimal(event["cost_usd"])
        if event.get("status", "ok") != "ok":
            usd = Decimal(0)
        tokens = int(event.get("input_tokens", 0)) + int(event.get("output_tokens", 0))
        if event.get("status", "ok") != "ok":
            tokens = 0  # failed calls are counted, but free in money and in tokens
        for scope in (("user", event["user_id"]), ("feature", event["feature"]),
                      ("global", "day")):
            self.usd[scope] += usd
            self.n[scope] += 1
            self.tokens[scope] += tokens
        return True

    @property
    def total(self) -> int:
        return self.n[("global", "day")]

    def users(self) -> list[str]:
        return sorted(k for s, k in self.n if s == "user")

    def features(self) -> list[str]:
        return sorted(k for s, k in self.n if s == "feature")

    def _scopes(self, kinds: Iterable[str]) -> list[tuple[str, str]]:
        kinds = set(kinds)
        return ([("global", "day")] if "global" in kinds else []) + [
            ("feature", f) for f in self.features() if "feature" in kinds] + [
            ("user", u) for u in self.users() if "user" in kinds]

    def mismatches(self, keys: Keys, kinds: Iterable[str] = KINDS) -> list[str]:
        """Every live spend key that differs from the ledger (empty when all are exact):
        the global day, each feature and each user (``kinds`` of them), events, USD
        (Decimal) and tokens."""
        wrong = []
        for scope in self._scopes(kinds):
            value = keys.get(spend(*scope))
            want = (self.n[scope], self.usd[scope], self.tokens[scope])
            got = None if value is None else (
                value["events"], Decimal(value["spent_usd"]), value["spent_tokens"])
            if got != want:
                wrong.append(f"{scope}: got {got}, published {want}")
        return wrong

    def settle(self, keys: Keys, timeout: float, kinds: Iterable[str] = KINDS,
               check: Callable[[], object] | None = None) -> list[str]:
        """Wait up to ``timeout`` for every key to be exact; return what still differs."""
        deadline = time.monotonic() + timeout
        while True:
            wrong = self.mismatches(keys, kinds)
            if not wrong or time.monotonic() > deadline:
                return wrong
            if check is not None:
                check()
            time.sleep(0.05)

    def counted(self, keys: Keys, kinds: Iterable[str] = KINDS) -> bool:
        """True once every spend key shows at least the events published (for wait_until)."""
        return all(keys.events(spend(s, k)) >= self.n[(s, k)]
                   for s, k in self._scopes(kinds))
