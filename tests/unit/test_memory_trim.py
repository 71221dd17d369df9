"""The worker hands freed heap pages back to the OS (glibc keeps them otherwise)."""

from __future__ import annotations

import os
import sys

import pytest

from spendstream.streams.memory import trim


def rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, needs glibc")
def test_freed_buffers_leave_the_resident_set_after_a_trim():
    # What a busy batch leaves: many record-sized buffers, each followed by a heap object
    # that outlives it (over 512 bytes: Python's small-object allocator would take it
    # elsewhere), so the freed space is holes all over the heap, not a free top that glibc
    # gives back by itself.
    buffers, keep = [], []
    start = rss()
    for i in range(3000):
        buffers.append(bytearray(b"x") * 40_000)  # written, so resident
        keep.append(bytearray(b"k") * (2048 + i % 7))
    assert rss() - start > 100 * 1024 * 1024
    del buffers
    before = rss()
    assert trim() is True
    after = rss()
    assert before - after > 50 * 1024 * 1024, (before, after)
    assert len(keep) == 3000
