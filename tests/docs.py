"""The documentation's code blocks, found by page and heading, for the tests that run them.

Every example in README.md and docs/ is run by a test; ``tests/unit/test_docs_examples.py``
fails when a python block appears that no test runs.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(page: Path, lang: str = "python") -> list[str]:
    """The ``lang`` code blocks of ``page``, in order."""
    return re.findall(rf"```{lang}\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


def block_under(page: Path, heading: str, lang: str = "python") -> str:
    """The first ``lang`` block in the section of ``page`` that starts with ``heading``
    (a whole heading line such as ``## Guard``), up to the next heading of that level."""
    text = page.read_text(encoding="utf-8")
    level = heading.split(" ", 1)[0]
    assert f"\n{heading}\n" in f"\n{text}", f"{page.name} has no section {heading!r}"
    section = f"\n{text}".split(f"\n{heading}\n", 1)[1].split(f"\n{level} ", 1)[0]
    found = re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)
    assert found, f"{page.name}'s section {heading!r} has no {lang} block"
    return found[0]
