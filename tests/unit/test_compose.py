"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The files are parsed and held against the code they must agree with: the worker's
environment against what :class:`~spendstream.settings.Settings` reads, the broker
address against Kafka's advertised listener, the image command against the CLI.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices

from spendstream.settings import Settings, kafka_bootstrap

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, whether written as a mapping or a KEY=value list."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def settings_env_names() -> set[str]:
    """Every environment variable Settings reads: its alias if it has one, else the prefix."""
    names: set[str] = set()
    prefix = Settings.model_config.get("env_prefix", "")
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str) and c.isupper()}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def test_the_four_services_and_no_zookeeper(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "redis", "postgres", "worker"} <= services.keys()
    for name, service in services.items():
        assert "zookeeper" not in name.lower()
        assert "zookeeper" not in str(service.get("image", "")).lower()
    assert not any("ZOOKEEPER" in key for key in env_of(services["kafka"]))


def test_kafka_is_a_single_kraft_node(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    env = env_of(kafka)
    assert kafka["image"] == "apache/kafka:3.9.0"
    roles = {r.strip() for r in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert roles == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:9093"

    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    assert listeners == {"PLAINTEXT": ":9092", "CONTROLLER": ":9093", "HOST": ":29092"}
    advertised = dict(item.split("://", 1)
                      for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised == {"PLAINTEXT": "kafka:9092", "HOST": "localhost:29092"}
    # apps on the host reach the HOST listener through the published port
    assert "29092:29092" in [str(p) for p in kafka["ports"]]
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
                     .split(","))
    assert set(listeners) <= set(protocols)

    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "false"
    assert kafka.get("healthcheck", {}).get("test")


def test_kafka_cluster_id_is_a_base64_uuid(services: dict[str, dict[str, Any]]) -> None:
    # kafka-storage.sh format rejects anything else, and the broker would never start.
    cluster_id = env_of(services["kafka"])["CLUSTER_ID"]
    try:
        raw = base64.urlsafe_b64decode(cluster_id + "==")
    except binascii.Error:
        pytest.fail(f"CLUSTER_ID {cluster_id!r} is not base64")
    assert len(cluster_id) == 22 and len(raw) == 16


def test_redis(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"] == "redis:7-alpine"
    test = redis["healthcheck"]["test"]
    assert "redis-cli ping" in (test if isinstance(test, str) else " ".join(test))


def test_postgres_is_the_ledger_the_worker_writes(services: dict[str, dict[str, Any]],
                                                  compose: dict[str, Any]) -> None:
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    env = env_of(postgres)
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    url = urlsplit(env_of(services["worker"])["SPENDSTREAM_DATABASE_URL"])
    assert url.scheme == "postgresql" and url.hostname == "postgres" and url.port == 5432
    assert url.username == env["POSTGRES_USER"]
    assert url.path == f"/{env['POSTGRES_DB']}"
    # Both sides take the password from the same variable, with the same default.
    assert url.password == env["POSTGRES_PASSWORD"]
    data = [v for v in postgres["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert data and data[0].split(":")[0] in compose["volumes"]


def test_worker_env_uses_only_names_settings_reads(services: dict[str, dict[str, Any]]) -> None:
    env = env_of(services["worker"])
    allowed = settings_env_names()
    assert {"SPENDSTREAM_KAFKA_URL", "SPENDSTREAM_REDIS_URL", "SPENDSTREAM_BUDGETS",
            "SLACK_WEBHOOK_URL"} <= allowed  # the contract's names are still what is read
    unknown = set(env) - allowed
    assert not unknown, f"worker sets variables Settings never reads: {sorted(unknown)}"
    assert env["SPENDSTREAM_KAFKA_URL"] == "kafka://kafka:9092"
    assert env["SPENDSTREAM_REDIS_URL"] == "redis://redis:6379/0"
    assert env["SPENDSTREAM_BUDGETS"] == "/config/budgets.yaml"
    assert env["SLACK_WEBHOOK_URL"] == "${SLACK_WEBHOOK_URL:-}"


def test_worker_env_parses_and_points_at_the_services(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in settings_env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env_of(services["worker"]).items():
        monkeypatch.setenv(name, "" if value.startswith("${") else value)  # compose default
    settings = Settings()
    advertised = dict(item.split("://", 1) for item in
                      env_of(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert settings.bootstrap_servers == kafka_bootstrap(f"kafka://{advertised['PLAINTEXT']}")
    assert urlsplit(settings.redis_url.get_secret_value()).hostname == "redis"
    mounts = [v.split(":") for v in services["worker"]["volumes"]]
    assert [str(settings.budgets), "ro"] in [m[1:] for m in mounts]


def test_worker_waits_for_healthy_dependencies(services: dict[str, dict[str, Any]]) -> None:
    depends = services["worker"]["depends_on"]
    assert isinstance(depends, dict)
    for name in ("kafka", "redis", "postgres"):
        assert depends[name]["condition"] == "service_healthy"
        assert services[name].get("healthcheck"), f"{name} needs a healthcheck to be waited on"


def test_worker_health_check_asks_the_worker(services: dict[str, dict[str, Any]],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from spendstream.cli import COMMANDS

    worker = services["worker"]
    test = worker["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:] == ["spendstream", "health"]
    assert "health" in COMMANDS
    port = env_of(worker)["SPENDSTREAM_METRICS_PORT"]
    monkeypatch.setenv("SPENDSTREAM_METRICS_PORT", port)
    assert str(Settings().metrics_port) == port
    assert port in [str(p) for p in worker["expose"]]
    assert "6379:6379" in [str(p) for p in services["redis"]["ports"]]


def test_worker_runs_spendstream_worker(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    build = worker["build"]
    assert (build if isinstance(build, str) else build.get("context")) == "."
    assert command_of(worker) == ["spendstream", "worker"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    pairs = []
    for item in logical:
        instruction, _, args = item.partition(" ")
        pairs.append((instruction.upper(), args.strip()))
    return pairs


def test_dockerfile_installs_the_package_and_runs_the_worker() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [args for instruction, args in instructions if instruction == "RUN"]
    assert any("pip install '.[worker]'" in run for run in runs)  # the worker's extra
    cmds = [args for instruction, args in instructions if instruction == "CMD"]
    assert cmds and json.loads(cmds[-1]) == ["spendstream", "worker"]
    # the CMD resolves: the package declares the `spendstream` console script
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["spendstream"] == "spendstream.cli:main"


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = ["pyproject.toml", pyproject["project"].get("readme", "README.md"),
              *pyproject["tool"]["setuptools"]["package-dir"].values()]
    for path in needed:
        assert not any(fnmatch.fnmatch(path, p) for p in patterns), f"{path} is ignored"
    for secret in (".env", "budgets.yaml", ".git"):
        assert any(fnmatch.fnmatch(secret, p) for p in patterns), f"{secret} is not ignored"
