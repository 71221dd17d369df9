"""Child processes of the benchmark: spendstream workers and the bare faust agent.

Every child is registered with a :class:`Children` and stopped by it (SIGTERM, then
SIGKILL) when the benchmark ends, whichever way it ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent


class Child:
    """A subprocess with its output in a log file; the log's tail explains a failure."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        """The process id (the Python interpreter itself, not a shell)."""
        return self.proc.pid

    def check_alive(self) -> None:
        """Raise with the log's tail when the process has exited."""
        if self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n{tail}")

    def rss_bytes(self) -> int:
        """Resident memory now (``VmRSS``)."""
        return _status_kb(self.pid, "VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        """Peak resident memory so far (``VmHWM``)."""
        return _status_kb(self.pid, "VmHWM") * 1024

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a faust worker shuts down cleanly), SIGKILL after ``timeout``."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


class Children:
    """The benchmark's child processes; :meth:`stop_all` ends every one still running."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.running: list[Child] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        """Start and register a child; its log goes to ``logdir/name.log``."""
        child = Child(name, argv, env, self.logdir / f"{name}.log")
        self.running.append(child)
        return child

    def stop(self, child: Child) -> None:
        """Stop one child now."""
        child.stop()
        if child in self.running:
            self.running.remove(child)

    def stop_all(self) -> None:
        """Stop every child still registered (used in ``finally``)."""
        while self.running:
            self.stop(self.running[-1])


def worker_env(*, kafka_url: str, redis_url: str, budgets: Path, topic: str, prefix: str,
               partitions: int, app_id: str, state_dir: Path,
               database_url: str | None = None) -> dict[str, str]:
    """The environment of one ``spendstream worker`` process (all its settings); with
    ``database_url`` the worker also writes the spend ledger there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPENDSTREAM_", "SLACK_"))}
    env.update({
        "SPENDSTREAM_KAFKA_URL": kafka_url, "SPENDSTREAM_REDIS_URL": redis_url,
        "SPENDSTREAM_BUDGETS": str(budgets), "SPENDSTREAM_TOPIC": topic,
        "SPENDSTREAM_REDIS_PREFIX": prefix, "SPENDSTREAM_PARTITIONS": str(partitions),
        "SPENDSTREAM_APP_ID": app_id, "SPENDSTREAM_STATE_DIR": str(state_dir),
    })
    if database_url:
        env["SPENDSTREAM_DATABASE_URL"] = database_url
    return env


def start_worker(children: Children, name: str, env: dict[str, str]) -> Child:
    """``python -m spendstream worker --log-level error``: the worker as a black box."""
    return children.start(name, [sys.executable, "-P", "-m", "spendstream", "worker",
                                 "--log-level", "error"], env)


def faust_ceiling(children: Children, *, kafka_url: str, topic: str, partitions: int, n: int,
                  app_id: str, workdir: Path, timeout: float = 600.0) -> tuple[float, float]:
    """Run the bare faust agent (``_faust_ceiling.py``) over ``n`` events of ``topic``.

    Returns (events/s from its first batch to its n-th event, seconds from process start
    to its first batch, i.e. faust's start-up and group join).
    """
    result = workdir / f"{app_id}.json"
    started = time.monotonic()
    child = children.start("faust-ceiling", [
        sys.executable, str(HERE / "_faust_ceiling.py"), kafka_url, topic, str(partitions),
        str(n), str(result), app_id, str(workdir / app_id)], dict(os.environ))
    try:
        while not result.exists():
            child.check_alive()
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"bare faust agent did not read {n} events in {timeout:.0f}s")
            time.sleep(0.2)
        data = orjson.loads(result.read_bytes())
    finally:
        children.stop(child)
    return data["events"] / data["seconds"], data["startup"]
