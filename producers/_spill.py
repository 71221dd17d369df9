"""The emitter's spill file: where events go when its memory buffer is full.

An append-only file of records ``crc32 | key length | value length | key | value``
(big-endian 32-bit integers) after a 16-byte header: a magic and the offset up to which
records were delivered to Kafka. Appends collect in memory and reach the file once 64 KiB
or a second has accumulated, or when the sender asks (once per batch); nothing is fsynced
per event. The header is rewritten (no fsync) after each delivered batch, so a process that
crashes leaves a file whose undelivered records, at most one batch more, are replayed by
the next emitter that opens it; a torn record at the end is cut off.

Each file is held with an exclusive ``flock``: several emitters sharing a directory (one
per process, say) each take the first free slot, ``<name>.spill``, ``<name>.1.spill``,
... . A crashed process's lock dies with it, so its file is the next emitter's to replay.

Not thread-safe: the emitter calls :meth:`append`, :meth:`flush`, :meth:`take_end`,
:meth:`consumed`, :meth:`reset` and :meth:`rewind` under its lock; :meth:`read` only reads
bytes that were flushed and that nobody changes until the same caller's next call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no spilling, see SpillFile.claim
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("spendstream.producers.emitter")

Message = tuple[bytes, bytes]
"""(key, value) as the emitter sends them."""

MAGIC = b"SSSPILL1"
HEADER = struct.Struct(">8sQ")  # magic, offset delivered up to
RECORD = struct.Struct(">III")  # crc32 of key+value, key length, value length
SLOTS = 64
"""Spill files per directory and name: one per emitter using it at the same time."""
_FLUSH_BYTES = 64 * 1024
_FLUSH_AGE = 1.0
"""Seconds an appended record may wait in memory before an append writes it out."""
_READ_CHUNK = 1024 * 1024
_MAX_FIELD = 16 * 1024 * 1024
"""A length beyond this is damage, not an event (events are at most 64 KiB)."""


class SpillFile:
    """One locked spill file; create it with :meth:`claim`."""

    def __init__(self, path: Path, fd: int, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.pending = 0
        """Records not yet read back (in the file or waiting to be written)."""
        self.error: OSError | None = None
        """The last write failure, for the caller's log."""
        self.lost = 0
        """Records appended and then lost to a failed write, not yet collected by the caller."""
        self._fd = fd
        self._buf = bytearray()
        self._buf_records = 0
        self._buf_since = 0.0
        self._end = HEADER.size  # the file's valid length
        self._committed = HEADER.size  # delivered up to here (as in the header)
        self._read_pos = HEADER.size
        self._read_uncommitted = 0
        self._open()

    @classmethod
    def claim(cls, directory: Path, name: str, max_bytes: int) -> SpillFile | None:
        """Lock the first free spill file for ``name`` in ``directory`` (created 0700).

        Returns None, with a warning, when the directory cannot be used or every slot is
        taken: the emitter then drops what memory cannot hold, as without a spill file.
        """
        if fcntl is None:  # pragma: no cover
            log.warning("no spill file on this platform (no flock); a full buffer drops events")
            return None
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for slot in range(SLOTS):
                path = directory / (f"{name}.spill" if slot == 0 else f"{name}.{slot}.spill")
                fd = _lock(path)
                if fd is not None:
                    try:
                        return cls(path, fd, max_bytes)
                    except BaseException:
                        os.close(fd)
                        raise
        except OSError as e:
            log.warning("cannot use spill directory %s (%s); a full buffer drops events",
                        directory, e)
            return None
        log.warning("all %d spill files for %s in %s are in use; a full buffer drops events",
                    SLOTS, name, directory)
        return None

    # -- writing -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes the file holds or will hold once flushed (delivered records included)."""
        return self._end + len(self._buf)

    def append(self, key: bytes, value: bytes, *, cap: bool = True) -> bool:
        """Add a record; False (nothing written) if it would pass the size cap.

        Writes out the records collected so far once they reach 64 KiB or a second; a
        write that fails loses them: see :meth:`flush`; :attr:`lost` counts them.
        """
        size = RECORD.size + len(key) + len(value)
        if cap and self.size + size > self.max_bytes:
            return False
        if not self._buf:
            self._buf_since = time.monotonic()
        self._buf += RECORD.pack(zlib.crc32(value, zlib.crc32(key)), len(key), len(value))
        self._buf += key
        self._buf += value
        self._buf_records += 1
        self.pending += 1
        if len(self._buf) >= _FLUSH_BYTES or time.monotonic() - self._buf_since > _FLUSH_AGE:
            self.flush()
        return True

    def flush(self) -> int:
        """Write the collected records out (no fsync); return how many a failure lost
        (also added to :attr:`lost`).

        On failure (disk full, I/O error) the file is cut back to its last good length, so
        no half-written record stays in it, and :attr:`error` says why.
        """
        if not self._buf:
            return 0
        data = bytes(self._buf)  # a view would pin the buffer while a failure is handled
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(self._fd, data[done:], self._end + done)
        except OSError as e:
            self.error = e
            lost = self._buf_records
            self.pending -= lost
            self.lost += lost
            self._buf.clear()
            self._buf_records = 0
            with contextlib.suppress(OSError):  # the next flush writes over it anyway
                os.ftruncate(self._fd, self._end)
            return lost
        self._end += len(self._buf)
        self._buf.clear()
        self._buf_records = 0
        return 0

    def collect_lost(self) -> int:
        """Records lost by writes since the last call (and forget them)."""
        lost, self.lost = self.lost, 0
        return lost

    # -- reading back --------------------------------------------------------------------

    def take_end(self) -> int:
        """Flush and return the end :meth:`read` may read up to (caller holds the lock)."""
        self.flush()
        return self._end

    def read(self, limit: int, end: int) -> tuple[list[Message], int, int]:
        """Up to ``limit`` records from the read cursor up to ``end`` (from
        :meth:`take_end`): ``(messages, position after them, damaged records skipped)``.
        Does not move the cursor: :meth:`consumed` does, under the caller's lock."""
        out: list[Message] = []
        damaged = 0
        pos = self._read_pos
        for pos, message in _records(self._fd, self._read_pos, end):  # noqa: B007
            if message is None:
                damaged += 1
            else:
                out.append(message)
            if len(out) + damaged >= limit:
                break
        return out, pos, damaged

    def consumed(self, n: int, pos: int) -> None:
        """Move the read cursor past ``n`` records that :meth:`read` returned."""
        self._read_pos = pos
        self._read_uncommitted += n
        self.pending -= n

    def commit(self) -> None:
        """Everything read so far is delivered: record it in the header (no fsync)."""
        self._committed = self._read_pos
        self._read_uncommitted = 0
        try:
            os.pwrite(self._fd, HEADER.pack(MAGIC, self._committed), 0)
        except OSError as e:  # at worst, those records are replayed again after a crash
            self.error = e

    def rewind(self) -> None:
        """Forget reads not committed: their records are read again (stop, retry later)."""
        self._read_pos = self._committed
        self.pending += self._read_uncommitted
        self._read_uncommitted = 0

    def reset(self) -> None:
        """Everything was delivered: empty the file (caller checked ``pending == 0``)."""
        assert self.pending == 0 and not self._buf
        self._end = self._committed = self._read_pos = HEADER.size
        self._read_uncommitted = 0
        try:
            os.ftruncate(self._fd, HEADER.size)
            os.pwrite(self._fd, HEADER.pack(MAGIC, HEADER.size), 0)
        except OSError as e:
            self.error = e

    def discard(self) -> int:
        """Give up on every unread record (the file is unreadable); return how many."""
        lost = self.pending
        self._buf.clear()
        self._buf_records = self.pending = self._read_uncommitted = 0
        self.reset()
        return lost

    def prepend(self, messages: Iterable[Message]) -> None:
        """Put ``messages`` before the unread records (at stop: memory holds older events
        than the file). Rewrites the file; raises OSError, leaving it as it was."""
        self.rewind()
        self.flush()
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            assert fcntl is not None
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # before anyone can see it
            head = bytearray(HEADER.pack(MAGIC, HEADER.size))
            n = 0
            for key, value in messages:
                head += RECORD.pack(zlib.crc32(value, zlib.crc32(key)), len(key), len(value))
                head += key + value
                n += 1
            os.pwrite(fd, head, 0)
            end, pos = len(head), self._read_pos
            while pos < self._end:
                chunk = os.pread(self._fd, min(_READ_CHUNK, self._end - pos), pos)
                end += os.pwrite(fd, chunk, end)
                pos += len(chunk)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd = fd
        self._end, self._committed, self._read_pos = end, HEADER.size, HEADER.size
        self.pending += n

    def close(self) -> None:
        """Write out, fsync once (the file outlives the process), unlock and close; an
        empty file is removed instead (still locked, so no other emitter is using it)."""
        self.flush()
        try:
            if self.pending:
                os.fsync(self._fd)
            else:
                self.path.unlink(missing_ok=True)
        except OSError as e:
            self.error = e
        os.close(self._fd)

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> None:
        """Adopt what an earlier process left (counting its records), or start the file."""
        size = os.fstat(self._fd).st_size
        committed = 0
        if size >= HEADER.size:
            magic, committed = HEADER.unpack(os.pread(self._fd, HEADER.size, 0))
            if magic != MAGIC or not HEADER.size <= committed <= size:
                log.warning("%s is not a spill file this version wrote; starting it anew",
                            self.path)
                committed = 0
        if committed == 0:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, HEADER.pack(MAGIC, HEADER.size), 0)
            return
        end = committed
        for end, _ in _records(self._fd, committed, size):  # noqa: B007
            self.pending += 1
        if end < size:
            log.warning("cut %d bytes of a torn record off the end of %s (a crash while "
                        "writing: those events are lost)", size - end, self.path)
            os.ftruncate(self._fd, end)
        self._end, self._committed, self._read_pos = end, committed, committed
        if self.pending:
            log.warning("%s holds %d usage event(s) an earlier process could not deliver; "
                        "sending them before new ones", self.path, self.pending)


def _lock(path: Path) -> int | None:
    """Open and exclusively lock ``path``; None when another emitter holds it."""
    assert fcntl is not None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # Replaced (prepend) between our open and our lock? Then lock the new file.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _records(fd: int, pos: int, end: int) -> Iterator[tuple[int, Message | None]]:
    """``(position after the record, message or None if its checksum fails)`` from
    ``pos`` to ``end``; stops early at a torn or damaged record."""
    while pos < end:
        data = os.pread(fd, min(_READ_CHUNK, end - pos), pos)
        off = 0
        while off + RECORD.size <= len(data):
            crc, klen, vlen = RECORD.unpack_from(data, off)
            if klen > _MAX_FIELD or vlen > _MAX_FIELD:
                return
            stop = off + RECORD.size + klen + vlen
            if stop > len(data):
                break
            key = data[off + RECORD.size:off + RECORD.size + klen]
            value = data[off + RECORD.size + klen:stop]
            ok = zlib.crc32(value, zlib.crc32(key)) == crc
            yield pos + stop, (key, value) if ok else None
            off = stop
        if off == 0:  # a record longer than the chunk, or a torn one at the end
            if len(data) < RECORD.size:
                return
            _, klen, vlen = RECORD.unpack_from(data, 0)
            whole = RECORD.size + klen + vlen
            if klen > _MAX_FIELD or vlen > _MAX_FIELD or pos + whole > end:
                return
            data = os.pread(fd, whole, pos)
            if len(data) < whole:
                return
            crc, _, _ = RECORD.unpack_from(data, 0)
            key, value = data[RECORD.size:RECORD.size + klen], data[RECORD.size + klen:]
            yield pos + whole, (key, value) if zlib.crc32(value, zlib.crc32(key)) == crc else None
            off = whole
        pos += off
