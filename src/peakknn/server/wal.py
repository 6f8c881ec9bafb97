"""Write-ahead log of one collection: numbered records in segment files, group commit, recovery.

Files (in the collection's folder): `wal-<first seq, 20 digits>.log`, each MAGIC (8 bytes) and
then records, all little-endian:

    u32 length of body | u32 CRC32 of body | body
    body = u64 seq | u8 op (1 upsert, 2 delete) | u32 count | u32 dim (0 for a delete)
           | i64[count] ids | f32[count, dim] vectors (upserts) | u32 n | n bytes of UTF-8 JSON:
           the list of count payloads (objects or null; n = 0: no payloads, every one null)

Sequence numbers grow by one per record across segments. `append` writes a record with one
os.write (not yet durable); `sync(seq)` returns once every record up to seq is on disk: the first
caller to find the log unsynced runs one fdatasync for everything appended so far while later
callers wait for it (group commit: one fsync for all writers waiting at that moment). `rotate`
starts a new segment, so that a snapshot at seq S can delete the segments before it, which hold
records <= S only.

`recover` reads the segments after a snapshot at seq S: records <= S are skipped, the first
record that is torn (cut short), fails its CRC, does not parse or breaks the sequence ends the
log: that segment is cut there and later segments are deleted, with a logged warning, and start-up
goes on with every record before it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..io import fsync_dir

log = logging.getLogger("peakknn.server.wal")

MAGIC = b"PKNNWAL1"
HEADER = struct.Struct("<II")  # body length, CRC32
FIXED = struct.Struct("<QBII")  # seq, op, count, dim
UPSERT, DELETE = 1, 2
OPS = {UPSERT: "upsert", DELETE: "delete"}
MAX_BODY = (1 << 32) - 1  # the length field's range
IOV_MAX = 16  # buffers per writev call (POSIX's minimum; a record has at most 6)
SEGMENT = re.compile(r"wal-(\d{20})\.log")


@dataclasses.dataclass(frozen=True)
class Record:
    """One logged write: op "upsert" (ids, vectors f32[count, dim], payloads or None) or
    "delete" (ids; vectors and payloads None)."""

    seq: int
    op: str
    ids: np.ndarray
    vectors: np.ndarray | None = None
    payloads: list | None = None


def encode(record: Record) -> bytes:
    """The record's bytes (header and body) as the log stores them."""
    return b"".join(encode_parts(record))


def encode_parts(record: Record) -> list:
    """`encode`'s bytes as a list of buffers (the vectors are not copied; `_write_all` writes them
    with one writev)."""
    ids = np.ascontiguousarray(record.ids, dtype="<i8")
    if record.op == "upsert":
        vectors = np.ascontiguousarray(record.vectors, dtype="<f4")
        op, dim = UPSERT, vectors.shape[1]
        payloads = b"" if record.payloads is None else json.dumps(record.payloads, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        parts = [FIXED.pack(record.seq, op, ids.size, dim), _raw(ids), _raw(vectors), struct.pack("<I", len(payloads)), payloads]
    elif record.op == "delete":
        parts = [FIXED.pack(record.seq, DELETE, ids.size, 0), _raw(ids), struct.pack("<I", 0)]
    else:
        raise ValueError(f"unknown op {record.op!r}")
    size, crc = 0, 0
    for part in parts:
        size += len(part)
        crc = zlib.crc32(part, crc)
    if size > MAX_BODY:
        raise ValueError(f"a log record holds at most {MAX_BODY} bytes, this one {size}")
    return [HEADER.pack(size, crc), *parts]


def _raw(a: np.ndarray):
    """The bytes of a C-contiguous array, not copied."""
    return memoryview(a).cast("B") if a.size else b""


def decode(body: bytes) -> Record:
    """The record of a body whose CRC matched; ValueError if it does not parse."""
    if len(body) < FIXED.size + 4:
        raise ValueError("record shorter than its fixed fields")
    seq, op, count, dim = FIXED.unpack_from(body)
    if op not in OPS or (op == DELETE and dim != 0) or (op == UPSERT and dim == 0):
        raise ValueError(f"bad op {op} / dim {dim}")
    at = FIXED.size
    ids = np.frombuffer(body, dtype="<i8", count=count, offset=at).astype(np.int64)
    at += 8 * count
    vectors = None
    if op == UPSERT:
        vectors = np.frombuffer(body, dtype="<f4", count=count * dim, offset=at).astype(np.float32).reshape(count, dim)
        at += 4 * count * dim
    (n,) = struct.unpack_from("<I", body, at)
    at += 4
    if at + n != len(body):
        raise ValueError(f"record length {len(body)} does not match its fields ({at + n})")
    payloads = None
    if n:
        payloads = json.loads(body[at:].decode())
        if not isinstance(payloads, list) or len(payloads) != count:
            raise ValueError("payloads are not a list of one entry per id")
    return Record(seq, OPS[op], ids, vectors, payloads)


def segment_name(first_seq: int) -> str:
    return f"wal-{first_seq:020d}.log"


def segments(folder: Path) -> list[tuple[int, Path]]:
    """(first seq, path) of the folder's segments, in order."""
    found = []
    for path in Path(folder).iterdir():
        m = SEGMENT.fullmatch(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


class _Reader:
    """The valid records of one segment file; afterwards `end` is the offset after the last of
    them and `problem` says why reading stopped early (None: the file ended cleanly)."""

    def __init__(self, path: Path):
        self.path = path
        self.end = 0
        self.problem: str | None = None

    def __iter__(self) -> Iterator[Record]:
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(len(MAGIC))
            if head != MAGIC:
                self.problem = "no segment header" if len(head) < len(MAGIC) else "wrong segment header"
                return
            self.end = len(MAGIC)
            while True:
                header = f.read(HEADER.size)
                if not header:
                    return
                if len(header) < HEADER.size:
                    self.problem = "torn record header"
                    return
                length, crc = HEADER.unpack(header)
                if self.end + HEADER.size + length > size:
                    self.problem = f"torn record (length {length}, {size - self.end - HEADER.size} bytes left)"
                    return
                body = f.read(length)
                if zlib.crc32(body) != crc:
                    self.problem = "CRC mismatch"
                    return
                try:
                    record = decode(body)
                except (ValueError, UnicodeDecodeError) as e:
                    self.problem = f"unreadable record: {e}"
                    return
                yield record
                self.end += HEADER.size + length


class Recovery:
    """Iterate the records after seq `after` (a snapshot's) in the folder's segments, cutting a
    bad tail as the module describes. After iteration: `last_seq` (the last valid record's seq,
    or `after`), `replayed` (records yielded) and `cut` (a description of what was cut, or None)."""

    def __init__(self, folder: Path, after: int):
        self.folder = Path(folder)
        self.after = after
        self.last_seq = after
        self.replayed = 0
        self.cut: str | None = None

    def __iter__(self) -> Iterator[Record]:
        found = segments(self.folder)
        expected = self.after + 1  # the seq the next replayed record must have
        for i, (first, path) in enumerate(found):
            later = [p for _, p in found[i + 1 :]]
            next_first = found[i + 1][0] if later else None
            if next_first is not None and next_first - 1 <= self.after:  # only records <= after: stale
                path.unlink(missing_ok=True)
                continue
            if first > expected:
                self._cut(path, None, f"records {expected}..{first - 1} are missing before it", later)
                return
            reader, problem, seq = _Reader(path), None, first
            for record in reader:
                if record.seq != seq:
                    problem = f"record seq {record.seq} where {seq} was expected"
                    break
                seq += 1
                if record.seq < expected:  # in the snapshot already
                    continue
                expected = record.seq + 1
                self.last_seq = record.seq
                self.replayed += 1
                yield record
            problem = problem or reader.problem
            if problem is not None:
                self._cut(path, reader.end, problem, later)
                return

    def _cut(self, path: Path, end: int | None, problem: str, later: list[Path]) -> None:
        """Truncate `path` at `end` (None, or no valid header: delete it) and delete `later`."""
        size = path.stat().st_size
        what = f"cut at byte {end} of {size}" if end else "deleted"
        self.cut = f"{path.name}: {problem}; {what}" + (f", {len(later)} later segment(s) deleted" if later else "")
        log.warning("write-ahead log %s: %s (the log ends at seq %d)", self.folder, self.cut, self.last_seq)
        if end:
            with open(path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        else:
            path.unlink(missing_ok=True)
        for p in later:
            p.unlink(missing_ok=True)
        fsync_dir(self.folder)


class WriteAheadLog:
    """The log of one collection, appending to a new segment that starts at `next_seq`.

    `append` is called by one writer at a time (the collection's write lock) and returns the
    record's seq; `sync` may be called from any number of threads. After an OSError in a write or
    an fsync the log is broken: later appends raise OSError (nothing more is acknowledged)."""

    def __init__(self, folder: Path, next_seq: int):
        self.folder = Path(folder)
        self._cond = threading.Condition(threading.Lock())
        self._syncing = False
        self._broken: str | None = None
        self.last_seq = next_seq - 1  # appended
        self.synced_seq = next_seq - 1
        self.fsyncs = 0
        self.bytes = sum(p.stat().st_size for _, p in segments(self.folder))
        self._fd = -1
        self._open_segment(next_seq)

    # ----------------------------------------------------------------- writes
    def append_upsert(self, ids: np.ndarray, vectors: np.ndarray, payloads: list | None) -> int:
        return self._append(lambda seq: encode_parts(Record(seq, "upsert", ids, vectors, payloads)))

    def append_delete(self, ids: np.ndarray) -> int:
        return self._append(lambda seq: encode_parts(Record(seq, "delete", ids)))

    def _append(self, make) -> int:
        with self._cond:
            self._check()
            seq = self.last_seq + 1
            data = make(seq)
            try:
                _write_all(self._fd, data)
            except OSError as e:
                self._broken = f"append failed: {e}"
                raise
            self.last_seq = seq
            self.bytes += sum(len(p) for p in data)
            return seq

    def sync(self, seq: int | None = None) -> None:
        """Return once every record up to `seq` (default: all appended) is on disk."""
        with self._cond:
            seq = self.last_seq if seq is None else seq
            while self.synced_seq < seq:
                self._check()
                if self._syncing:  # a leader's fsync is running: it may cover us
                    self._cond.wait()
                    continue
                self._syncing = True
                target, fd = self.last_seq, self._fd
                self._cond.release()
                try:
                    _fdatasync(fd)
                except OSError as e:
                    failed = e
                else:
                    failed = None
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                if failed is not None:
                    self._broken = f"fsync failed: {failed}"
                    raise failed
                self.fsyncs += 1
                self.synced_seq = max(self.synced_seq, target)

    def rotate(self) -> int:
        """Sync the current segment and start a new one at the next seq; returns the last seq
        written before it (every record of the older segments is <= it). Call it with no append
        running (the collection's lock)."""
        with self._cond:
            while self._syncing:
                self._cond.wait()
            self._check()
            try:
                _fdatasync(self._fd)
            except OSError as e:
                self._broken = f"fsync failed: {e}"
                raise
            self.fsyncs += 1
            self.synced_seq = self.last_seq
            os.close(self._fd)
            self._fd = -1
            self._open_segment(self.last_seq + 1)
            return self.last_seq

    def drop_before(self, seq: int) -> None:
        """Delete the segments that hold only records <= seq (those before the current one)."""
        with self._cond:
            current = self._first
        found = segments(self.folder)
        for i, (first, path) in enumerate(found):
            next_first = found[i + 1][0] if i + 1 < len(found) else None
            if first < current and next_first is not None and next_first - 1 <= seq:
                size = path.stat().st_size
                path.unlink(missing_ok=True)
                with self._cond:
                    self.bytes -= size
        fsync_dir(self.folder)

    def close(self) -> None:
        """Sync and close (idempotent)."""
        with self._cond:
            while self._syncing:
                self._cond.wait()
            if self._fd >= 0:
                if self._broken is None:
                    _fdatasync(self._fd)
                    self.synced_seq = self.last_seq
                os.close(self._fd)
                self._fd = -1
                self._broken = self._broken or "closed"

    # ----------------------------------------------------------------- internals
    def _check(self) -> None:
        if self._broken is not None:
            raise OSError(f"write-ahead log {self.folder} is unusable ({self._broken})")

    def _open_segment(self, first: int) -> None:
        """A fresh segment file (replacing one of that name: it can hold no valid record, or
        recovery would have continued the sequence past it)."""
        path = self.folder / segment_name(first)
        old = path.stat().st_size if path.exists() else 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            _write_all(fd, [MAGIC])
            os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        fsync_dir(self.folder)
        self._fd, self._first = fd, first
        self.bytes += len(MAGIC) - old


def _write_all(fd: int, parts: list) -> None:
    """Write the buffers (bytes or byte memoryviews) in order, however many calls it takes."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        n = os.writev(fd, views[:IOV_MAX]) if hasattr(os, "writev") else os.write(fd, views[0])
        while n:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0] = views[0][n:]
                n = 0


def _fdatasync(fd: int) -> None:
    (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(fd)
