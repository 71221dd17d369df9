"""One settings object per process, built once at the entry point and passed down.

Nothing else in spendstream reads ``os.environ``: this module is the only place
where the environment (and an optional settings file) turns into configuration.
"""

from __future__ import annotations

import difflib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from spendstream.errors import ConfigError

log = logging.getLogger("spendstream.settings")


class Settings(BaseSettings):
    """Process settings. Every field is optional; see the README for the table."""

    model_config = SettingsConfigDict(
        env_prefix="SPENDSTREAM_", frozen=True, extra="ignore", populate_by_name=True
    )

    kafka_url: str = "kafka://localhost:9092"
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    database_url: SecretStr | None = None
    """``postgresql://...``: turns the spend ledger on (see docs/ledger.md); none: no ledger."""
    budgets: Path = Path("./budgets.yaml")
    topic: str = "spendstream.usage"
    redis_prefix: str = "spendstream:"
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)
    app_id: str = "spendstream"
    grace_seconds: int = Field(default=3600, ge=0)
    max_future_seconds: int = Field(default=300, ge=0)
    """How far ahead of the worker's clock an event's ``ts`` may be (producers' clock skew);
    later events go to the dead-letter topic."""
    dedup_seconds: int = Field(default=3600, ge=60)
    """How long the worker remembers event ids; a redelivery later than this counts again."""
    flush_interval: float = Field(default=0.25, gt=0)
    status_interval: float = Field(default=10.0, gt=0)
    dashboard_token: SecretStr | None = None
    """Bearer token that allows the dashboard's write actions (kill switch); none: the
    dashboard is read-only."""
    digest_at: str | None = None
    """When the worker sends the weekly digest to Slack, e.g. ``mon 09:00`` (UTC); none: never."""
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    """Where the worker serves /metrics, /healthz and /livez; 0 turns them off."""
    state_dir: Path = Path(tempfile.gettempdir()) / "spendstream"
    session_timeout: float = Field(default=10.0, ge=3.0, le=90.0)
    """Seconds before a silent worker's partitions move to the others (after a crash); at
    most faust's request timeout (90 s)."""
    group_instance_id: str | None = Field(default=None, min_length=1, max_length=249)
    """A stable name for this worker replica (Kafka static membership): a worker restarted
    under the same name takes its partitions back at once instead of waiting for its old
    session to expire. Each replica needs its own (a StatefulSet pod name); none: dynamic
    membership."""
    guard_cache_ttl: float = Field(default=1.0, ge=0)
    """Seconds the call-site guard caches the flags it read (a kill switch takes this long)."""
    guard_fail_closed: bool = False
    """Refuse calls (ServiceUnavailable) instead of letting them through when Redis is down."""
    guard_rate_limit_per_minute: int | None = Field(default=None, ge=1)
    """Requests per user per minute the guard admits, across replicas; none by default."""

    spill_dir: Path | None = None
    """Where an emitter built from these settings spills events its memory buffer cannot
    hold (Kafka down or slow); ``<state_dir>/spill`` when unset."""
    spill_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """Size cap of one emitter's spill file; past it events are dropped. 0: never spill."""
    pack_events: bool = True
    """An emitter built from these settings packs a round's events into one Kafka record per
    partition (a JSON array); False: one record per event, for workers that predate it."""

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        "PLAINTEXT")
    """How every Kafka client (emitter, topic set-up, worker) connects: see kafka_auth."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] = (
        "PLAIN")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_oauth_token_provider: str | None = None
    """``package.module:name`` of an aiokafka ``AbstractTokenProvider`` subclass (or a
    callable returning one), for ``OAUTHBEARER``: managed Kafka services hand out tokens
    through their own client library, so the provider is the user's code."""
    kafka_ssl_cafile: Path | None = None
    """CA bundle that signed the brokers' certificates; the system's CAs when unset."""
    kafka_ssl_certfile: Path | None = None
    """Client certificate (PEM) for brokers that require mutual TLS."""
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None

    slack_webhook_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SLACK_WEBHOOK_URL", "slack_webhook_url")
    )
    slack_bot_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SLACK_BOT_TOKEN", "slack_bot_token")
    )
    slack_channel: str | None = Field(
        default=None, validation_alias=AliasChoices("SLACK_CHANNEL", "slack_channel")
    )
    slack_api_url: str | None = Field(
        default=None, validation_alias=AliasChoices("SLACK_API_URL", "slack_api_url")
    )

    @field_validator("kafka_url")
    @classmethod
    def _kafka_scheme(cls, v: str) -> str:
        kafka_bootstrap(v, require_scheme=True)  # ValueError names the problem
        return v

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None  # empty means unset (docker compose's ${VAR:-})
        if not v.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL, e.g. "
                             "postgresql://user:password@localhost:5432/spendstream")
        return v

    @field_validator("dashboard_token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None  # empty means unset: read-only
        if len(v.get_secret_value()) < 8:
            raise ValueError("must be at least 8 characters (it guards the kill switch)")
        return v

    @property
    def ledger_group(self) -> str:
        """The spend ledger's own consumer group: its position is not the counters'."""
        return f"{self.app_id}.ledger"

    @property
    def dlq_topic(self) -> str:
        """Where malformed usage events go, with the reason."""
        return f"{self.topic}.dlq"

    @property
    def alert_topic(self) -> str:
        """Every alert is also published here, Slack or not."""
        return f"{self.topic}.alerts"

    @property
    def rollup_topic(self) -> str:
        """Internal: stage one's partial sums, keyed by feature. Named by the app id (as
        faust names the changelogs, ``<app_id>-<table>-changelog``) and the usage topic:
        two app ids reading one usage topic (staging and production, blue/green, a replay
        after a price fix) each keep their own state."""
        return f"{self.app_id}-{self.topic}-rollup"

    @property
    def handover_topic(self) -> str:
        """Internal: alerts a run stopped before delivering, for the next run to deliver."""
        return f"{self.app_id}-{self.topic}-alert-handover"

    @property
    def emitter_spill_dir(self) -> Path | None:
        """The spill directory of an emitter built from these settings; None: no spilling."""
        if self.spill_max_bytes == 0:
            return None
        return self.spill_dir or self.state_dir / "spill"

    @property
    def bootstrap_servers(self) -> str:
        """``host:port[,host:port]`` for aiokafka, from ``kafka_url``."""
        return kafka_bootstrap(self.kafka_url)


KAFKA_SCHEMES = ("kafka", "aiokafka")


def kafka_bootstrap(url: str, require_scheme: bool = False) -> str:
    """Turn ``kafka://h1:9092;h2:9092`` (faust style) into aiokafka's ``h1:9092,h2:9092``.

    A bare ``host:port`` list is taken as is unless ``require_scheme``; any scheme other
    than ``kafka://`` (or faust's ``aiokafka://``) is a :class:`ValueError`: a typo such as
    ``kafak://`` must not pass silently.
    """
    scheme, sep, hosts = url.strip().rpartition("://")
    if sep and scheme.lower() not in KAFKA_SCHEMES:
        raise ValueError(f"unknown scheme {scheme + '://'!r} in {url!r}; use "
                         "kafka://host:9092[,host2:9092]")
    if not sep and require_scheme:
        raise ValueError(f"{url!r} has no scheme; use kafka://host:9092[,host2:9092]")
    servers = ",".join(h.strip().rstrip("/") for h in hosts.replace(";", ",").split(",")
                       if h.strip())
    if not servers:
        raise ValueError("names no broker; use kafka://host:9092[,host2:9092]")
    return servers


def load_settings(settings_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the process settings from the environment, an optional env file and overrides.

    Raises :class:`ConfigError` naming the bad variable when a value does not parse.
    """
    _warn_misspelled(os.environ)
    try:
        if settings_file is not None:
            if not settings_file.is_file():
                raise ConfigError(f"settings file {settings_file} does not exist")
            return Settings(_env_file=settings_file, **overrides)  # type: ignore[call-arg]
        return Settings(**overrides)
    except ValidationError as e:
        problems = "; ".join(
            f"SPENDSTREAM_{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from e


def _warn_misspelled(environ: Mapping[str, str]) -> list[str]:
    """Warn of each ``SPENDSTREAM_*`` variable that is no setting but close to one (a typo
    is otherwise ignored: the default applies without a word); the warnings given."""
    known = {f"SPENDSTREAM_{name.upper()}" for name in Settings.model_fields}
    said = []
    for name in sorted(environ):
        if name.startswith("SPENDSTREAM_") and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            if close:
                said.append(f"{name} is not a spendstream setting (ignored); did you mean "
                            f"{close[0]}?")
                log.warning("%s", said[-1])
    return said
