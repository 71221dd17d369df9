"""The worker hands freed heap pages back to the OS (glibc keeps them otherwise)."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

# Run in a fresh interpreter: in the test process, earlier tests' freed heap would be
# reused by the buffers below and the resident size would not show them.
SCRIPT = """
import os, orjson
from spendstream.streams.memory import trim

def rss():
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

# What a busy batch leaves: many record-sized buffers, each followed by a heap object that
# outlives it (over 512 bytes: Python's small-object allocator would take it elsewhere),
# so the freed space is holes all over the heap, not a free top glibc gives back by itself.
buffers, keep = [], []
start = rss()
for i in range(3000):
    buffers.append(bytearray(b"x") * 40_000)  # written, so resident
    keep.append(bytearray(b"k") * (2048 + i % 7))
grown = rss() - start
del buffers
before = rss()
trimmed = trim()
print(orjson.dumps({"grown": grown, "before": before, "after": rss(), "trimmed": trimmed,
                    "kept": len(keep)}).decode())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, needs glibc")
def test_freed_buffers_leave_the_resident_set_after_a_trim():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, check=True,
                         text=True, timeout=60).stdout
    r = orjson.loads(out)
    assert r["grown"] > 100 * 1024 * 1024, r
    assert r["trimmed"] is True and r["kept"] == 3000
    assert r["before"] - r["after"] > 50 * 1024 * 1024, r
