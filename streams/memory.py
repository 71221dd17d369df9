"""Handing freed heap memory back to the operating system.

A worker under load buffers Kafka records (a packed record is tens of kilobytes), builds
changelog bodies and Redis pipelines; all of it is freed after each batch, but glibc keeps
freed heap pages mapped unless asked to trim them, so the resident size stays at its peak
for good. :func:`trim` asks, where the C library is glibc; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
        return trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to do
        return None


def trim() -> bool:
    """Return free heap memory to the OS; ``False`` where the C library cannot."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
