"""Polling helpers and a worker-process fixture builder shared by integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(fn: Callable[[], T], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.05, check: Callable[[], None] | None = None) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` on timeout.

    ``check`` runs on each poll and may raise (e.g. when the worker process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class WorkerProcess:
    """``spendstream worker`` as a child process, the way an operator runs it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spendstream", "worker", "--log-level", "warning"],
            env={**os.environ, **env}, stdout=self._out, stderr=subprocess.STDOUT)

    def alive(self) -> None:
        """Raise with the worker's log when it has exited."""
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output()}")

    def output(self) -> str:
        """Everything the worker printed so far."""
        self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (a graceful stop drains alerts and flags)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode
