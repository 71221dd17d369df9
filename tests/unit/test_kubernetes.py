"""deploy/kubernetes/worker.yaml, checked without a cluster: parsed and held against the
settings, the CLI, the budgets parser and the worker's HTTP endpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from spendstream.cli import COMMANDS
from spendstream.domain.budgets import parse_budgets
from spendstream.settings import Settings
from tests.unit.test_compose import settings_env_names

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "worker.yaml"


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8"))}


def container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    [c] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def test_the_budgets_in_the_config_map_parse(docs: dict[str, dict[str, Any]]) -> None:
    budgets = parse_budgets(yaml.safe_load(docs["ConfigMap"]["data"]["budgets.yaml"]))
    assert "chat" in budgets.features


def test_env_uses_only_names_settings_reads_and_parses(docs: dict[str, dict[str, Any]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    c = container(docs)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert set(env) <= settings_env_names()
    for name in settings_env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    settings = Settings()
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert str(settings.budgets.parent) == mounts["budgets"]
    assert str(settings.state_dir) == mounts["state"]
    [port] = c["ports"]
    assert port["containerPort"] == settings.metrics_port
    svc = docs["Service"]
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == str(settings.metrics_port)


def test_probes_use_the_workers_endpoints(docs: dict[str, dict[str, Any]]) -> None:
    from spendstream.streams.observe import ObservabilityServer  # the paths it serves

    c = container(docs)
    assert c["command"] == ["spendstream", "worker"] and "worker" in COMMANDS
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    source = Path(__import__("inspect").getsourcefile(ObservabilityServer) or "").read_text()
    assert '"/healthz"' in source and '"/livez"' in source


def test_workers_run_unprivileged_and_selectors_match(docs: dict[str, dict[str, Any]]) -> None:
    pod = docs["Deployment"]["spec"]["template"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    labels = pod["metadata"]["labels"]
    for kind in ("Deployment", "PodDisruptionBudget"):
        assert docs[kind]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
