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
    # What a busy batch leaves: many record-sized buffers, each followed by a small object
    # that outlives it, so the freed space is spread over the heap, not at its top.
    buffers, keep = [], []
    for i in range(3000):
        buffers.append(bytearray(40_000))
        keep.append(bytearray(100 + i % 7))
    del buffers
    before = rss()
    assert trim() is True
    after = rss()
    assert before - after > 50 * 1024 * 1024, (before, after)
    assert len(keep) == 3000
