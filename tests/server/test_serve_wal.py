"""The write-ahead log alone: record round trips, group commit, and recovery from torn, corrupt
and stale segments (cut at every kind of offset, bytes flipped)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from peakknn.server import wal


def _records(n: int, rng, dim: int = 4) -> list[wal.Record]:
    out = []
    for seq in range(1, n + 1):
        m = int(rng.integers(0, 4))
        ids = rng.choice(1000, size=m, replace=False).astype(np.int64)
        if rng.random() < 0.25:
            out.append(wal.Record(seq, "delete", ids))
        else:
            payloads = None if rng.random() < 0.5 else [None if rng.random() < 0.3 else {"i": int(i), "s": "é" * int(i % 3)} for i in ids]
            out.append(wal.Record(seq, "upsert", ids, rng.standard_normal((m, dim)).astype(np.float32), payloads))
    return out


def _write(folder, records, start: int = 1) -> wal.WriteAheadLog:
    log = wal.WriteAheadLog(folder, start)
    for r in records:
        seq = log.append_upsert(r.ids, r.vectors, r.payloads) if r.op == "upsert" else log.append_delete(r.ids)
        assert seq == r.seq
    log.sync()
    return log


def _same(a: wal.Record, b: wal.Record) -> bool:
    if (a.seq, a.op, a.payloads) != (b.seq, b.op, b.payloads) or not np.array_equal(a.ids, b.ids):
        return False
    return (a.vectors is None and b.vectors is None) or np.array_equal(a.vectors, b.vectors)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    for r in _records(50, rng):
        data = wal.encode(r)
        length, _ = wal.HEADER.unpack_from(data)
        assert length == len(data) - wal.HEADER.size
        assert _same(wal.decode(data[wal.HEADER.size :]), r)


def test_recovery_reads_everything_after_the_snapshot(tmp_path):
    rng = np.random.default_rng(1)
    records = _records(30, rng)
    _write(tmp_path, records).close()
    for after in (0, 7, 30):
        rec = wal.Recovery(tmp_path, after)
        got = list(rec)
        assert [r.seq for r in got] == list(range(after + 1, 31))
        assert all(_same(g, records[g.seq - 1]) for g in got)
        assert rec.last_seq == 30 and rec.cut is None


def test_rotation_and_drop_before(tmp_path):
    rng = np.random.default_rng(2)
    records = _records(20, rng)
    log = _write(tmp_path, records[:10])
    assert log.rotate() == 10
    for r in records[10:]:
        log.append_upsert(r.ids, r.vectors, r.payloads) if r.op == "upsert" else log.append_delete(r.ids)
    log.sync()
    assert [first for first, _ in wal.segments(tmp_path)] == [1, 11]
    log.drop_before(10)
    assert [first for first, _ in wal.segments(tmp_path)] == [11]
    assert log.bytes == sum(p.stat().st_size for _, p in wal.segments(tmp_path))
    log.close()
    assert [r.seq for r in wal.Recovery(tmp_path, 10)] == list(range(11, 21))


def test_stale_segments_are_deleted_at_recovery(tmp_path):
    rng = np.random.default_rng(3)
    records = _records(12, rng)
    log = _write(tmp_path, records[:6])
    log.rotate()
    for r in records[6:]:
        log.append_upsert(r.ids, r.vectors, r.payloads) if r.op == "upsert" else log.append_delete(r.ids)
    log.close()
    rec = wal.Recovery(tmp_path, 6)  # a snapshot at 6 whose clean-up was interrupted
    assert [r.seq for r in rec] == list(range(7, 13)) and rec.cut is None
    assert [first for first, _ in wal.segments(tmp_path)] == [7]


def test_group_commit_covers_concurrent_writers(tmp_path, monkeypatch):
    log = wal.WriteAheadLog(tmp_path, 1)
    real = wal._fdatasync
    gate = threading.Event()

    def slow_sync(fd):  # the first fsync waits until every writer has appended
        gate.wait(5)
        real(fd)

    monkeypatch.setattr(wal, "_fdatasync", slow_sync)
    lock = threading.Lock()
    writers, seqs = 16, []

    def writer(i):
        with lock:  # the collection's write lock: one append at a time
            seq = log.append_delete(np.array([i], dtype=np.int64))
            seqs.append(seq)
            if len(seqs) == writers:
                gate.set()
        log.sync(seq)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(seqs) == list(range(1, writers + 1)) and log.synced_seq == writers
    assert log.fsyncs <= 2, f"{log.fsyncs} fsyncs for {writers} writers waiting at once"
    log.close()


def test_truncation_at_every_offset_keeps_the_complete_records(tmp_path):
    rng = np.random.default_rng(4)
    records = _records(8, rng)
    src = tmp_path / "src"
    src.mkdir()
    _write(src, records).close()
    (_, path), = wal.segments(src)
    data = path.read_bytes()
    ends = [len(wal.MAGIC)]
    for r in records:
        ends.append(ends[-1] + len(wal.encode(r)))
    assert ends[-1] == len(data)
    for cut in range(len(data) + 1):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        (folder / path.name).write_bytes(data[:cut])
        rec = wal.Recovery(folder, 0)
        got = list(rec)
        complete = sum(1 for e in ends[1:] if e <= cut)
        assert [r.seq for r in got] == list(range(1, complete + 1)), cut
        assert all(_same(g, records[g.seq - 1]) for g in got)
        assert (rec.cut is None) == (cut in ends), cut
        # the cut file now ends at the last complete record; a new log continues the sequence
        log = wal.WriteAheadLog(folder, rec.last_seq + 1)
        assert log.append_delete(np.array([1], dtype=np.int64)) == rec.last_seq + 1
        log.close()
        again = wal.Recovery(folder, 0)
        assert [r.seq for r in again] == list(range(1, complete + 2)) and again.cut is None


@pytest.mark.parametrize("seed", range(3))
def test_flipped_bytes_end_the_log_at_the_damaged_record(tmp_path, seed):
    rng = np.random.default_rng(10 + seed)
    records = _records(10, rng)
    _write(tmp_path, records).close()
    (_, path), = wal.segments(tmp_path)
    data = bytearray(path.read_bytes())
    ends = [len(wal.MAGIC)]
    for r in records:
        ends.append(ends[-1] + len(wal.encode(r)))
    for trial in range(20):
        at = int(rng.integers(len(wal.MAGIC), len(data)))
        damaged = bytearray(data)
        damaged[at] ^= 1 << int(rng.integers(0, 8))
        folder = tmp_path / f"flip{trial}"
        folder.mkdir()
        (folder / path.name).write_bytes(bytes(damaged))
        rec = wal.Recovery(folder, 0)
        got = list(rec)
        hit = next(i for i in range(len(records)) if ends[i] <= at < ends[i + 1])  # the record holding the byte
        assert [r.seq for r in got] == list(range(1, hit + 1))
        assert all(_same(g, records[g.seq - 1]) for g in got)
        assert rec.cut is not None and (folder / path.name).stat().st_size == ends[hit]


def test_a_gap_or_a_later_segment_after_damage_is_dropped(tmp_path):
    rng = np.random.default_rng(5)
    records = _records(9, rng)
    log = _write(tmp_path, records[:3])
    log.rotate()
    for r in records[3:6]:
        log.append_upsert(r.ids, r.vectors, r.payloads) if r.op == "upsert" else log.append_delete(r.ids)
    log.rotate()
    for r in records[6:]:
        log.append_upsert(r.ids, r.vectors, r.payloads) if r.op == "upsert" else log.append_delete(r.ids)
    log.close()
    (_, first), (_, middle), (_, last) = wal.segments(tmp_path)
    middle.write_bytes(middle.read_bytes()[:-3])  # record 6 torn: segment 7.. cannot follow
    rec = wal.Recovery(tmp_path, 0)
    assert [r.seq for r in rec] == [1, 2, 3, 4, 5] and rec.cut is not None
    assert not last.exists() and first.exists()


def test_missing_records_after_the_snapshot_end_the_log(tmp_path):
    rng = np.random.default_rng(6)
    records = _records(6, rng)
    log = wal.WriteAheadLog(tmp_path, 4)  # the log starts at 4 but the snapshot is at 1
    for r in records[3:]:
        log.append_upsert(r.ids, r.vectors, r.payloads) if r.op == "upsert" else log.append_delete(r.ids)
    log.close()
    rec = wal.Recovery(tmp_path, 1)
    assert list(rec) == [] and "missing" in rec.cut and rec.last_seq == 1


def test_a_broken_log_refuses_appends(tmp_path, monkeypatch):
    log = wal.WriteAheadLog(tmp_path, 1)
    log.append_delete(np.array([1], dtype=np.int64))

    def fail(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal, "_fdatasync", fail)
    with pytest.raises(OSError):
        log.sync()
    with pytest.raises(OSError, match="unusable"):
        log.append_delete(np.array([2], dtype=np.int64))
    log.close()
