"""`spendstream up`: the embedded broker, a Redis-compatible server, PostgreSQL for the spend
ledger and a worker process.

Everything runs in the foreground as child processes and is stopped on Ctrl-C or when
the worker exits, so nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from spendstream.embedded import EmbeddedBroker, EmbeddedPostgres, EmbeddedRedis, free_port
from spendstream.errors import ServiceUnavailable
from spendstream.redact import redact_url
from spendstream.settings import Settings


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def say(msg: str) -> None:
    """Status output of `up` and `demo`: one line, flushed at once."""
    print(f"spendstream | {msg}", flush=True)


class Stack:
    """Broker, Redis, the ledger's PostgreSQL and worker for one `up` or `demo` run."""

    def __init__(self, settings: Settings, budgets_path: Path, worker_log_level: str = "warning"
                 ) -> None:
        self.settings = settings
        self.budgets_path = budgets_path
        self.worker_log_level = worker_log_level
        self.broker: EmbeddedBroker | None = None
        self.redis: EmbeddedRedis | None = None
        self.redis_url = settings.redis_url.get_secret_value()
        self.postgres: EmbeddedPostgres | None = None
        self.database_url = (None if settings.database_url is None
                             else settings.database_url.get_secret_value())
        self.worker: subprocess.Popen[bytes] | None = None

    @property
    def kafka_url(self) -> str:
        """Where the embedded broker listens."""
        assert self.broker is not None
        return self.broker.url

    def start(self) -> None:
        """Start the broker, pick or start Redis, then start the worker process.

        SIGTERM (``docker stop``, systemd, ``kill``) is turned into the same clean stop as
        Ctrl-C, so no broker or Redis process outlives ``up``.
        """
        signal.signal(signal.SIGTERM, _interrupt)
        self.broker = EmbeddedBroker(port=9092 if _port_free(9092) else None)
        say(f"starting the embedded Kafka broker (Tansu, in memory) on {self.broker.bootstrap}")
        self.broker.start()
        if "redis_url" in self.settings.model_fields_set:
            say("using Redis from SPENDSTREAM_REDIS_URL")
        elif _redis_answers("127.0.0.1", 6379):
            say("using the Redis server already running on 127.0.0.1:6379")
            self.redis_url = "redis://127.0.0.1:6379/0"
        else:
            self.redis = EmbeddedRedis(port=6379 if _port_free(6379) else None)
            say(f"starting an embedded Redis-compatible server on 127.0.0.1:{self.redis.port}")
            self.redis.start()
            self.redis_url = self.redis.url
        self._start_postgres()
        assert self.database_url is not None
        port = self.settings.metrics_port
        if port and not _port_free(port, "0.0.0.0"):  # where the worker listens
            port = free_port()
        env = dict(os.environ, SPENDSTREAM_KAFKA_URL=self.kafka_url,
                   SPENDSTREAM_REDIS_URL=self.redis_url,
                   SPENDSTREAM_BUDGETS=str(self.budgets_path),
                   SPENDSTREAM_REDIS_PREFIX=self.settings.redis_prefix,
                   SPENDSTREAM_DATABASE_URL=self.database_url,
                   SPENDSTREAM_METRICS_PORT=str(port))
        say(f"starting the worker (budgets: {self.budgets_path})")
        if port:
            say(f"worker metrics: http://127.0.0.1:{port}/metrics, health: "
                f"http://127.0.0.1:{port}/healthz")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "spendstream", "worker", "--log-level", self.worker_log_level],
            env=env)

    def _start_postgres(self) -> None:
        """The spend ledger's database: SPENDSTREAM_DATABASE_URL's, else an embedded one."""
        if self.database_url is not None:
            say(f"using PostgreSQL from SPENDSTREAM_DATABASE_URL ({redact_url(self.database_url)})"
                " for the spend ledger")
            return
        self.postgres = EmbeddedPostgres()
        say("starting an embedded PostgreSQL 16 (pgserver) for the spend ledger")
        started = time.monotonic()
        self.postgres.start()
        self.database_url = self.postgres.url
        say(f"PostgreSQL is up in {time.monotonic() - started:.1f}s: {self.database_url} "
            f"(data in {self.postgres.data}, deleted at exit)")

    def env_hint(self) -> str:
        """The exports an application needs to talk to this stack (a Redis password from
        SPENDSTREAM_REDIS_URL shows as ``***``: the terminal may be logged)."""
        return (f"export SPENDSTREAM_KAFKA_URL={self.kafka_url} "
                f"SPENDSTREAM_REDIS_URL={redact_url(self.redis_url)} "
                f"SPENDSTREAM_REDIS_PREFIX={self.settings.redis_prefix}"
                + (f" SPENDSTREAM_DATABASE_URL={redact_url(self.database_url)}"
                   if self.database_url else ""))

    def check_worker(self) -> None:
        """Raise when the worker process has died."""
        if self.worker is not None and self.worker.poll() is not None:
            raise ServiceUnavailable(f"the worker exited with code {self.worker.returncode}; "
                                     "see its output above")

    def wait(self) -> int:
        """Block until the worker exits (or Ctrl-C); return its exit code."""
        assert self.worker is not None
        while self.worker.poll() is None:
            time.sleep(0.5)
        return self.worker.returncode

    def stop(self) -> None:
        """Stop the worker (SIGTERM, then SIGKILL), then Redis and the broker."""
        if self.worker is not None and self.worker.poll() is None:
            say("stopping the worker")
            self.worker.terminate()
            try:
                self.worker.wait(15)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        if self.postgres is not None:
            self.postgres.remove()
        if self.redis is not None:
            self.redis.stop()
        if self.broker is not None:
            self.broker.stop()
        say("stopped")
