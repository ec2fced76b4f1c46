"""Outbox on flash: order, acks, torn writes, eviction, persistence."""

import os
import struct

from firmware.app.outbox import Outbox
from firmware.app.store import FlashStore
from protocol import codec
from protocol.topics import KIND_ALARM, KIND_GPS


def record(seq, kind=KIND_GPS, epoch=1):
    buf = bytearray(49)
    codec.pack_header(buf, kind, 0, epoch, seq, 1700000000 + seq)
    buf[14:] = bytes([seq & 0xFF]) * 35
    return buf


def seq_of(buf):
    return struct.unpack_from(">I", buf, 6)[0]


def make(tmp_path, **kw):
    store = FlashStore(str(tmp_path / "flash"))
    ob = Outbox(store, **kw)
    ob.load()
    return store, ob


def drain(ob, ack=True):
    """Send and ack everything; returns the seqs in send order."""
    out = []
    buf = bytearray(140)
    for lane in (ob.alarm, ob.tele):
        while True:
            n = lane.next_record(buf)
            if not n:
                break
            out.append(seq_of(buf))
            if ack:
                lane.acked(lane.ticket)
    return out


def test_records_leave_in_order_and_only_after_ack(tmp_path):
    _, ob = make(tmp_path)
    for s in range(10):
        ob.append(False, record(s), 49, 0)
    assert drain(ob, ack=False) == list(range(10))
    assert ob.depth == 10
    ob.rewind()
    assert drain(ob) == list(range(10))
    assert ob.depth == 0


def test_alarms_are_sent_before_the_backlog(tmp_path):
    _, ob = make(tmp_path)
    for s in range(5):
        ob.append(False, record(s), 49, 0)
    ob.append(True, record(5, KIND_ALARM), 49, 0)
    assert drain(ob) == [5, 0, 1, 2, 3, 4]


def test_online_records_acked_from_ram_never_touch_flash(tmp_path):
    store, ob = make(tmp_path)
    before = store.writes
    buf = bytearray(140)
    for s in range(100):
        ob.append(False, record(s), 49, s * 1000)
        assert ob.tele.next_record(buf)
        ob.tele.acked(ob.tele.ticket)
        ob.poll(s * 1000)
    assert store.writes == before
    assert ob.depth == 0


def test_backlog_is_batched_into_few_flash_writes(tmp_path):
    store, ob = make(tmp_path, flush_records=32)
    before = store.writes
    for s in range(320):
        ob.append(False, record(s), 49, 0)
        ob.poll(0)
    assert ob.flash_appends == 10
    assert store.writes - before <= 12
    assert drain(ob) == list(range(320))


def test_backlog_survives_reboot(tmp_path):
    _, ob = make(tmp_path, flush_records=8)
    for s in range(50):
        ob.append(False, record(s), 49, 0)
    ob.sync()
    _, ob2 = make(tmp_path, flush_records=8)
    assert ob2.depth == 50
    assert drain(ob2) == list(range(50))


def test_acked_records_are_not_resent_after_reboot(tmp_path):
    _, ob = make(tmp_path, flush_records=8, segment_records=16)
    for s in range(40):
        ob.append(False, record(s), 49, 0)
    ob.sync()
    buf = bytearray(140)
    for _ in range(20):
        ob.tele.next_record(buf)
        ob.tele.acked(ob.tele.ticket)
    ob.sync()
    _, ob2 = make(tmp_path, flush_records=8, segment_records=16)
    assert drain(ob2) == list(range(20, 40))


def test_torn_record_is_skipped_and_the_rest_survives(tmp_path):
    store, ob = make(tmp_path, flush_records=4, segment_records=8)
    for s in range(12):
        ob.append(False, record(s), 49, 0)
    ob.sync()
    segs = sorted(os.listdir(tmp_path / "flash" / "ob" / "t"))
    # a power cut in the middle of the write of the first segment's last frame
    first = tmp_path / "flash" / "ob" / "t" / segs[0]
    data = first.read_bytes()
    first.write_bytes(data[:-20])
    torn_seq = len(data) // 55 - 1        # frames of a 49-byte record are 55 bytes
    _, ob2 = make(tmp_path, flush_records=4, segment_records=8)
    assert ob2.torn == 1
    assert drain(ob2) == [s for s in range(12) if s != torn_seq]
    # and new records go to a fresh segment, never behind the torn frame
    ob2.append(False, record(12), 49, 0)
    ob2.sync()
    _, ob3 = make(tmp_path, flush_records=4, segment_records=8)
    assert drain(ob3) == [12]


def test_garbage_segment_file_does_not_crash_the_outbox(tmp_path):
    store, ob = make(tmp_path)
    (tmp_path / "flash" / "ob" / "t" / "00000003.seg").write_bytes(os.urandom(300))
    (tmp_path / "flash" / "ob" / "t.cur").write_bytes(b"nonsense")
    _, ob2 = make(tmp_path)
    assert drain(ob2) == []
    ob2.append(False, record(1), 49, 0)
    assert drain(ob2) == [1]


def test_eviction_drops_the_oldest_fixes_and_counts_them(tmp_path):
    _, ob = make(tmp_path, max_records=64, segment_records=16, flush_records=8)
    for s in range(100):
        ob.append(False, record(s), 49, 0)
    assert ob.depth <= 64
    assert ob.drops == 100 - ob.depth
    got = drain(ob)
    assert got == list(range(100 - len(got), 100))


def test_alarms_are_never_evicted_before_fixes(tmp_path):
    _, ob = make(tmp_path, max_records=64, segment_records=16, flush_records=8)
    for s in range(10):
        ob.append(True, record(s, KIND_ALARM), 49, 0)
    for s in range(10, 200):
        ob.append(False, record(s), 49, 0)
    got = drain(ob)
    assert got[:10] == list(range(10))
    assert ob.drops == 200 - len(got)


def test_unacked_records_are_resent_after_rewind(tmp_path):
    _, ob = make(tmp_path, flush_records=4, segment_records=8)
    buf = bytearray(140)
    for s in range(20):
        ob.append(False, record(s), 49, 0)
    ob.poll(10 ** 9)
    sent = []
    for _ in range(6):
        ob.tele.next_record(buf)
        sent.append(seq_of(buf))
    ob.tele.acked(ob.tele.ticket - 3)   # the first three were acked
    ob.rewind()
    assert drain(ob) == list(range(3, 20))
