"""The benchmark's output: one table of figures against issue 4's targets, the exactness
checks, and one JSON line per run appended to ``bench/results.jsonl``."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from _watch import Check

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure; ``met`` is None when the figure has no target."""

    key: str
    name: str
    value: float
    shown: str
    target: str = ""
    met: bool | None = None

    @property
    def verdict(self) -> str:
        """``pass``, ``miss`` or blank."""
        return "" if self.met is None else ("pass" if self.met else "miss")


def at_least(key: str, name: str, value: float, shown: str, target: float,
             target_shown: str) -> Figure:
    """A figure that must reach ``target``."""
    return Figure(key, name, value, shown, f">= {target_shown}", value >= target)


def below(key: str, name: str, value: float, shown: str, target: float,
          target_shown: str) -> Figure:
    """A figure that must stay under ``target``."""
    return Figure(key, name, value, shown, f"< {target_shown}", value < target)


def print_table(figures: list[Figure], checks: list[Check]) -> None:
    """The figures, then one PASS/FAIL line per exactness check, as markdown tables."""
    rows = [("figure", "value", "target", "pass/miss")]
    rows += [(f.name, f.shown, f.target, f.verdict) for f in figures]
    rows += [(f"exact: {c.name}", c.detail, "= published", _verdict(c)) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    print(line(rows[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows[1:]:
        print(line(r))


def _verdict(check: Check) -> str:
    return "SKIP" if check.ok is None else ("PASS" if check.ok else "FAIL")


def git_commit(repo: Path) -> str:
    """``git rev-parse --short HEAD``, with ``+dirty`` when tracked files are modified."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def record(figures: list[Figure], checks: list[Check], run: dict[str, Any], commit: str,
           path: Path = RESULTS) -> None:
    """Append this run as one JSON line: date, commit (as at the start of the run),
    parameters, figures and checks."""
    line = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit,
        "machine": f"{platform.machine()}, {_cpus()} cpus, Python {platform.python_version()}",
        **run,
        "figures": {f.key: round(f.value, 3) if math.isfinite(f.value) else None
                    for f in figures},
        "targets_met": {f.key: f.met for f in figures if f.met is not None},
        "checks": [asdict(c) for c in checks],
    }
    with open(path, "ab") as out:
        out.write(orjson.dumps(line) + b"\n")


def _cpus() -> int:
    return len(os.sched_getaffinity(0))
