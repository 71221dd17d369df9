"""The dead-letter topic's messages (``<topic>.dlq``): the original key and bytes, with
headers that say why and where they came from.

A record too big to be produced again (a 2 MB value on a topic that allows it) still goes
to the DLQ, its key and value cut to a size every producer sends, with the original sizes
and the value's SHA-256 in headers; the whole record stays in its source topic, at the
offset in ``x-spendstream-source``, until the topic's retention removes it.
"""

from __future__ import annotations

import hashlib

REASON = "x-spendstream-reason"
SOURCE = "x-spendstream-source"
ORIGINAL_BYTES = "x-spendstream-original-bytes"
"""Set when the value was cut: the original value's length."""
ORIGINAL_SHA256 = "x-spendstream-original-sha256"
"""Set when the value was cut: the original value's SHA-256, in hex."""
ORIGINAL_KEY_BYTES = "x-spendstream-original-key-bytes"
"""Set when the key was cut: the original key's length."""

MAX_VALUE_BYTES = 1_000_000
"""The longest value dead-lettered whole: with the key, the headers and the batch overhead
it stays under Kafka's default message limit (1 MiB), which the DLQ topic has."""
MAX_KEY_BYTES = 4 * 1024
"""The longest key dead-lettered whole (a key is a user id: 256 characters at most)."""
MAX_REQUEST_BYTES = 1_048_576 + 1024
"""The worker's producer request limit: a DLQ message at the limits above fits."""


def dead_letter(key: bytes | None, value: bytes | None, reason: str, source: str
                ) -> tuple[bytes | None, bytes | None, dict[str, bytes]]:
    """The DLQ message for a record (or one element of a packed record) that could not be
    counted: ``(key, value, headers)``, key and value cut to :data:`MAX_KEY_BYTES` and
    :data:`MAX_VALUE_BYTES` when longer (headers say so)."""
    headers = {REASON: reason.encode(), SOURCE: source.encode()}
    if value is not None and len(value) > MAX_VALUE_BYTES:
        headers[ORIGINAL_BYTES] = str(len(value)).encode()
        headers[ORIGINAL_SHA256] = hashlib.sha256(value).hexdigest().encode()
        value = value[:MAX_VALUE_BYTES]
    if key is not None and len(key) > MAX_KEY_BYTES:
        headers[ORIGINAL_KEY_BYTES] = str(len(key)).encode()
        key = key[:MAX_KEY_BYTES]
    return key, value, headers
