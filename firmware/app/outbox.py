"""The outbox: signed records waiting for their PUBACK, on flash.

Layout. One log per lane: ``ob/a`` for alarms, ``ob/t`` for telemetry
(fixes and heartbeats). A log is a run of segment files ``<id>.seg`` (ids
ascending) of framed records::

    0xA5 | len u8 | envelope (len bytes) | crc32(len byte + envelope) u32 BE

appended only. A frame that does not check (power cut mid-write) ends its
segment for the reader: the rest of that segment is skipped and counted in
``torn``. After a boot the writer always starts a fresh segment, so nothing
is ever appended behind a torn frame.

Order. Each lane is one FIFO in (epoch, seq) order, as the receiver's replay
window needs; the device sends the alarm lane first, so alarms overtake a
backlog of fixes. A record leaves the log only when ``acked`` is called with
its seq (its PUBACK arrived): the head moves past it and a segment whose
records are all acked is deleted. After a reconnect ``rewind`` sends every
unacked record again (duplicates with identical seq, nothing lost).

Bound and eviction. At most ``max_records`` across both lanes. When full,
the oldest telemetry segment is deleted and its unacked records counted in
the lane's ``drops``; an alarm segment goes only when no telemetry is left.

Failing flash (full, worn out, unmounted). ``append`` never raises: a
record that fits in the lane's RAM tail is kept there (sendable, and acked
from RAM while online); one that fits nowhere is refused (``append`` returns
False) and counted in the lane's ``drops``. The alarm lane has its own RAM
tail (``ALARM_RAM_RECORDS`` full-size records, about 9 typical alarms) that
telemetry never fills, so alarms are the last thing dropped; when it is
full, a critical alarm makes room by evicting (counted) the oldest RAM record
the caller calls evictable (the device: minor alarms such as recording
started/stopped), else it is dropped. After a failed append a lane waits
``FLUSH_RETRY_MS`` before the next attempt (``failing`` and ``error`` say
why, for one log line per burst); a cursor that cannot be saved stays dirty
and is saved later.

Flash wear. New records sit in a RAM tail of up to ``flush_records``
records and are appended in one write when the tail is full, when the
oldest is ``flush_age_s`` old, or at once for alarms. Records acked while
still in RAM never touch flash, so an online device writes almost nothing;
offline the cost is one write per ``flush_records`` records or per
``flush_age_s`` (whichever comes first) plus one file create per segment.
The head position is saved in ``<lane>.cur`` every ``cursor_save_s`` at
most (and whenever a segment is deleted, which is free progress): a crash
resends at most that much, as duplicates. A power cut loses at most the
RAM tail (its seqs are never reused: see state.py).
"""

import struct

import binascii

from firmware.app.compat import ticks_add, ticks_diff

MAGIC = 0xA5
FRAME_OVERHEAD = 6
MAX_PAYLOAD = 128
_RAM = -1               # segment id that stands for the RAM tail
FLUSH_RETRY_MS = 10000  # after a failed flash append, wait this long to retry
ALARM_RAM_RECORDS = 4   # alarms the alarm lane can hold in RAM when flash fails


def _crc(mv):
    return binascii.crc32(mv) & 0xFFFFFFFF


class LaneLog:
    """One lane's FIFO: flash segments followed by the RAM tail."""

    def __init__(self, store, name, segment_records, flush_records, ram_bytes=0):
        self.store = store
        self.name = name
        self.dir = "ob/" + name
        self.segment_records = segment_records
        self.flush_records = flush_records
        self.segs = []          # segment ids on flash, ascending
        self.seg_count = []     # valid records in each
        self.seg_size = []      # valid bytes in each
        self.write_open = False  # may the last segment take more appends?
        self.ram = bytearray(max(ram_bytes, flush_records * 72 + MAX_PAYLOAD + FRAME_OVERHEAD))
        self.ram_len = 0
        self.ram_count = 0
        self.ram_since = 0
        # head: first unacked record; send: next record to transmit
        self.head_seg = _RAM
        self.head_off = 0
        self.head_idx = 0       # records before head in the head segment
        self.send_seg = _RAM
        self.send_off = 0
        self.inflight = []      # [ticket, seg, off-after] of sent, unacked records
        self.ticket = 0         # numbers sends; seq restarts each epoch, this does not
        self.next_sid = 0
        self.count = 0          # unacked records (flash from head + RAM)
        self.torn = 0
        self.dirty = False      # head moved since the cursor was saved
        self.last_appended = b""
        self.last_flushed = b""
        self.flushes = 0        # appends to flash (the wear figure)
        self.evicted_from_ram = 0   # of drops: made room for a more important record
        self.drops = 0          # records lost: evicted, or refused with flash failing
        self.failing = False    # the last flash append failed ...
        self.error = ""         # ... for this reason
        self._retry_at = 0
        self._backoff = False   # failing, and _retry_at not yet reached
        self._rf = None
        self._rf_seg = None
        self._hdr = bytearray(2)

    # ---- boot ----

    def load(self):
        self.store.mkdir("ob")
        self.store.mkdir(self.dir)
        ids = []
        for fn in self.store.listdir(self.dir):
            if fn.endswith(".seg"):
                try:
                    ids.append(int(fn[:-4]))
                except ValueError:
                    pass
        ids.sort()
        cur_seg, cur_off = self._load_cursor()
        self.next_sid = max(cur_seg, ids[-1] + 1 if ids else 0)
        for sid in ids:
            if sid < cur_seg:
                self.store.remove(self._seg_name(sid))   # acked before the crash
                continue
            n, size = self._scan(sid)
            self.segs.append(sid)
            self.seg_count.append(n)
            self.seg_size.append(size)
        self.write_open = False
        self.head_seg = _RAM
        self.head_off = 0
        self.head_idx = 0
        self.count = 0
        if self.segs:
            self.head_seg = self.segs[0]
            if self.head_seg == cur_seg and cur_off:
                self.head_idx = self._scan(self.head_seg, cur_off)[0]
                self.head_off = cur_off
        for i in range(len(self.segs)):
            self.count += self.seg_count[i]
        self.count -= self.head_idx
        self.rewind()

    def _load_cursor(self):
        raw = self.store.read(self.dir + ".cur", 64)
        if raw and len(raw) == 12 and _crc(raw[:8]) == struct.unpack(">I", raw[8:])[0]:
            return struct.unpack(">II", raw[:8])
        return 0, 0

    def save_cursor(self):
        if self.head_seg == _RAM:
            seg = self.next_sid
            off = 0
        else:
            seg = self.head_seg
            off = self.head_off
        head = struct.pack(">II", seg, off)
        try:
            self.store.write_atomic(self.dir + ".cur", head + struct.pack(">I", _crc(head)))
        except OSError as e:
            # a stale cursor only means duplicates after a reboot: keep going
            self.store.errors += 1
            self.failing = True
            self.error = "cursor: %s" % e
            self.dirty = True
            return False
        self.dirty = False
        self.failing = False      # the flash takes writes again
        return True

    def _seg_name(self, sid):
        return "%s/%08d.seg" % (self.dir, sid)

    def _scan(self, sid, stop=-1):
        """(valid records, valid bytes) of a segment, up to byte ``stop``."""
        n = 0
        off = 0
        buf = bytearray(MAX_PAYLOAD + FRAME_OVERHEAD)
        try:
            f = self.store.open_read(self._seg_name(sid))
        except OSError:
            return 0, 0
        try:
            while stop < 0 or off < stop:
                got = self._read_frame(f, buf)
                if got <= 0:
                    if got < 0:
                        self.torn += 1
                    break
                n += 1
                off += got + FRAME_OVERHEAD
        finally:
            f.close()
        return n, off

    def _read_frame(self, f, buf):
        """Payload length of the frame at f's position (into buf), 0 at end,
        -1 if torn or corrupt."""
        hdr = self._hdr
        k = f.readinto(hdr)
        if not k:
            return 0
        if k != 2 or hdr[0] != MAGIC or hdr[1] == 0 or hdr[1] > MAX_PAYLOAD:
            return -1
        n = hdr[1]
        mv = memoryview(buf)
        if f.readinto(mv[:n + 4]) != n + 4:
            return -1
        crc = _crc(hdr[1:2])
        crc = binascii.crc32(mv[:n], crc) & 0xFFFFFFFF
        if crc != struct.unpack_from(">I", buf, n)[0]:
            return -1
        return n

    # ---- writing ----

    def append(self, mv, n, now_ms, urgent=False, evictable=None):
        """Frame ``mv[:n]`` into the RAM tail (flushing first if it is full).
        False if there was no room (flash failing): the record is dropped and
        counted. ``urgent`` (alarms) tries the flash even while backing off;
        ``evictable(frame)``, given, names RAM records that may make room."""
        if self.ram_len + n + FRAME_OVERHEAD > len(self.ram):
            if (urgent or self.may_flush(now_ms)) and self.flush(now_ms):
                pass
            while (self.ram_len + n + FRAME_OVERHEAD > len(self.ram)
                   and evictable is not None and self.evict_from_ram(evictable)):
                pass
            if self.ram_len + n + FRAME_OVERHEAD > len(self.ram):
                self.drops += 1
                return False
        ram = self.ram
        p = self.ram_len
        ram[p] = MAGIC
        ram[p + 1] = n
        ram[p + 2:p + 2 + n] = mv[:n]
        crc = binascii.crc32(memoryview(ram)[p + 1:p + 2 + n]) & 0xFFFFFFFF
        struct.pack_into(">I", ram, p + 2 + n, crc)
        if not self.ram_count:
            self.ram_since = now_ms
        self.last_appended = bytes(mv[2:10])    # (epoch, seq), for traces
        self.ram_len = p + n + FRAME_OVERHEAD
        self.ram_count += 1
        self.count += 1
        return True

    def evict_from_ram(self, evictable):
        """Drop (and count) the oldest RAM record that ``evictable(envelope)``
        allows, if none of the RAM tail was sent or acked yet (then nothing
        points into it but offset 0, and it can be compacted). True if one went."""
        if ((self.head_seg == _RAM and self.head_off) or (self.send_seg == _RAM and self.send_off)
                or any(e[1] == _RAM for e in self.inflight)):
            return False
        ram = self.ram
        mv = memoryview(ram)
        p = 0
        while p < self.ram_len:
            n = ram[p + 1]
            size = n + FRAME_OVERHEAD
            if evictable(mv[p + 2:p + 2 + n]):
                ram[p:self.ram_len - size] = mv[p + size:self.ram_len]
                self.ram_len -= size
                self.ram_count -= 1
                self.count -= 1
                self.drops += 1
                self.evicted_from_ram += 1
                return True
            p += size
        return False

    def may_flush(self, now_ms):
        """False while backing off after a failed flash append."""
        if self._backoff and ticks_diff(now_ms, self._retry_at) < 0:
            return False
        self._backoff = False
        return True

    def age_out(self, now_ms, limit_ms):
        """Keep tick stamps within ``limit_ms`` of now (ticks wrap): call
        at least daily, the device does it every second."""
        if self.ram_count and ticks_diff(now_ms, self.ram_since) > limit_ms:
            self.ram_since = ticks_add(now_ms, -limit_ms)
        self.may_flush(now_ms)

    def flush_due(self, now_ms, flush_age_ms):
        return self.ram_count and self.may_flush(now_ms) and (
            self.ram_count >= self.flush_records
            or ticks_diff(now_ms, self.ram_since) >= flush_age_ms)

    def flush(self, now_ms=None):
        """Append the RAM tail to flash in one write; True if written. On
        failure the records stay in RAM and, given ``now_ms``, the lane
        backs off for FLUSH_RETRY_MS."""
        if not self.ram_count:
            return False
        if not self.write_open or self.seg_count[-1] >= self.segment_records:
            sid = self.next_sid
            self.next_sid += 1
            self.segs.append(sid)
            self.seg_count.append(0)
            self.seg_size.append(0)
            self.write_open = True
        sid = self.segs[-1]
        base = self.seg_size[-1]
        try:
            self.store.append(self._seg_name(sid), memoryview(self.ram)[:self.ram_len])
        except OSError as e:
            self.store.errors += 1
            self.write_open = False   # never append behind a partial write
            if self.seg_count[-1] == 0:
                self._drop_last_empty()
            self.failing = True
            self.error = "append: %s" % e
            if now_ms is not None:
                self._retry_at = ticks_add(now_ms, FLUSH_RETRY_MS)
                self._backoff = True
            return False
        self.failing = False
        self.flushes += 1
        self.seg_count[-1] += self.ram_count
        self.seg_size[-1] = base + self.ram_len
        self.last_flushed = self.last_appended
        # positions that pointed into RAM now point into this segment
        if self.head_seg == _RAM:
            self.head_seg = sid
            self.head_off = base + self.head_off
            self.head_idx = self.seg_count[-1] - self.ram_count + self.head_idx
        if self.send_seg == _RAM:
            self.send_seg = sid
            self.send_off = base + self.send_off
        for e in self.inflight:
            if e[1] == _RAM:
                e[1] = sid
                e[2] = base + e[2]
        self.ram_len = 0
        self.ram_count = 0
        return True

    def _drop_last_empty(self):
        self.segs.pop()
        self.seg_count.pop()
        self.seg_size.pop()

    # ---- reading and acks ----

    def _frame_at(self, seg, off, buf):
        """Payload length at (seg, off) into buf; 0 at the end of that
        segment (or the RAM tail), -1 if the frame is torn."""
        if seg == _RAM:
            if off >= self.ram_len:
                return 0
            n = self.ram[off + 1]
            buf[:n] = memoryview(self.ram)[off + 2:off + 2 + n]
            return n
        i = self._seg_index(seg)
        if i < 0 or off >= self.seg_size[i]:
            return 0
        if self._rf_seg != seg:
            self._close_reader()
            self._rf = self.store.open_read(self._seg_name(seg))
            self._rf_seg = seg
        self._rf.seek(off)
        return self._read_frame(self._rf, buf)

    def _close_reader(self):
        if self._rf is not None:
            self._rf.close()
        self._rf = None
        self._rf_seg = None

    def _seg_index(self, seg):
        segs = self.segs
        for i in range(len(segs)):
            if segs[i] == seg:
                return i
        return -1

    def _after(self, seg):
        """The segment (or RAM) that follows ``seg``."""
        i = self._seg_index(seg)
        if 0 <= i < len(self.segs) - 1:
            return self.segs[i + 1]
        return _RAM

    def next_record(self, buf):
        """Copy the next unsent record into buf; returns its length (0 if
        none). ``self.ticket`` then names it for ``acked``."""
        while True:
            n = self._frame_at(self.send_seg, self.send_off, buf)
            if n > 0:
                self.send_off += n + FRAME_OVERHEAD
                self.ticket += 1
                self.inflight.append([self.ticket, self.send_seg, self.send_off])
                return n
            if self.send_seg == _RAM:
                return 0
            if n < 0:
                self.torn += 1
                self._skip_torn(self.send_seg)
            self.send_seg = self._after(self.send_seg)
            self.send_off = 0

    def _skip_torn(self, seg):
        """Records behind a torn frame are unreadable: drop them from counts."""
        i = self._seg_index(seg)
        if i >= 0:
            lost = self.seg_count[i] - self._scan(seg, self.send_off)[0]
            if lost > 0:
                self.count -= lost
                self.seg_count[i] -= lost
            self.seg_size[i] = self.send_off

    def pending_send(self):
        return self.send_seg != _RAM or self.send_off < self.ram_len

    def acked(self, ticket):
        """A PUBACK for ``ticket``: drop it and everything sent before it.

        In-flight records are always the run of records that starts at the
        head, so the acked ones end where the last of them ends."""
        fl = self.inflight
        k = 0
        while k < len(fl) and fl[k][0] <= ticket:
            k += 1
        if not k:
            return False
        last_seg = fl[k - 1][1]
        last_off = fl[k - 1][2]
        in_ram = 0
        in_last = 0
        for i in range(k):
            if fl[i][1] == _RAM:
                in_ram += 1
            if fl[i][1] == last_seg:
                in_last += 1
        del fl[:k]
        self.count -= k
        if last_seg == _RAM:
            while self.segs:            # every flash record is acked
                self._delete_first()
            self._ram_consumed(last_off, in_ram)
            return True
        while self.segs and self.segs[0] != last_seg:
            self._delete_first()
        if self.head_seg == last_seg:
            self.head_idx += in_last
        else:
            self.head_seg = last_seg
            self.head_idx = in_last
        self.head_off = last_off
        self.dirty = True
        if (last_off >= self.seg_size[0]
                and not (self.write_open and len(self.segs) == 1)):
            self._delete_first()
        return True

    def _ram_consumed(self, off, k):
        """The first ``off`` bytes (``k`` records) of the RAM tail are acked:
        shift the rest down; they never reach flash."""
        ram = self.ram
        rest = self.ram_len - off
        ram[0:rest] = memoryview(ram)[off:self.ram_len]
        self.ram_len = rest
        self.ram_count -= k
        self.head_seg = _RAM
        self.head_off = 0
        self.head_idx = 0
        if self.send_seg == _RAM:
            self.send_off -= off
        for e in self.inflight:
            if e[1] == _RAM:
                e[2] -= off

    def _delete_first(self):
        """Delete the head segment; the head moves to what follows."""
        sid = self.segs[0]
        left = self.seg_count[0] - self.head_idx
        if sid == self._rf_seg:
            self._close_reader()
        self.store.remove(self._seg_name(sid))
        self.segs.pop(0)
        self.seg_count.pop(0)
        self.seg_size.pop(0)
        if not self.segs:
            self.write_open = False
        nxt = self.segs[0] if self.segs else _RAM
        if self.head_seg == sid:
            self.head_seg = nxt
            self.head_off = 0
            self.head_idx = 0
        if self.send_seg == sid:
            self.send_seg = nxt
            self.send_off = 0
        self.save_cursor()
        return left

    def evict_oldest(self):
        """Drop the oldest segment with its unacked records; returns how many."""
        if not self.segs:
            return 0
        if len(self.segs) == 1 and self.write_open:
            self.write_open = False   # the next flush starts a new segment
        sid = self.segs[0]
        left = self.seg_count[0] - (self.head_idx if self.head_seg == sid else 0)
        self.inflight = [e for e in self.inflight if e[1] != sid]
        self._delete_first()
        self.count -= left
        return left

    def rewind(self):
        """After a reconnect: send everything unacked again, oldest first."""
        self.inflight = []
        self.send_seg = self.head_seg
        self.send_off = self.head_off


class Outbox:
    """Both lanes, the global bound and the counters for the heartbeat."""

    def __init__(self, store, max_records=8192, segment_records=256,
                 flush_records=32, flush_age_s=120, cursor_save_s=300):
        self.store = store
        self.max_records = max_records
        self.flush_age_ms = flush_age_s * 1000
        self.cursor_save_ms = cursor_save_s * 1000
        self.alarm = LaneLog(store, "a", max(8, segment_records // 8), 1,
                             ALARM_RAM_RECORDS * (MAX_PAYLOAD + FRAME_OVERHEAD))
        self.tele = LaneLog(store, "t", segment_records, flush_records)
        self._cursor_saved_ms = None

    def load(self):
        self.alarm.load()
        self.tele.load()

    @property
    def depth(self):
        return self.alarm.count + self.tele.count

    @property
    def flash_appends(self):
        return self.alarm.flushes + self.tele.flushes

    @property
    def drops(self):
        """Records lost, both lanes (the heartbeat's ``outbox_drops``)."""
        return self.alarm.drops + self.tele.drops

    @property
    def failing(self):
        return self.alarm.failing or self.tele.failing

    @property
    def error(self):
        return self.alarm.error if self.alarm.failing else self.tele.error

    @property
    def torn(self):
        return self.alarm.torn + self.tele.torn

    def lane(self, is_alarm):
        return self.alarm if is_alarm else self.tele

    def append(self, is_alarm, mv, n, now_ms, evictable=None):
        """Keep a record; False if it had to be dropped (flash failing; counted
        in the lane's drops). Never raises for flash errors. ``evictable``:
        which records in the lane's RAM tail may make room for this one."""
        lane = self.alarm if is_alarm else self.tele
        if not lane.append(mv, n, now_ms, is_alarm, evictable):
            return False
        if is_alarm:
            lane.flush(now_ms)
        while self.depth > self.max_records:
            victim = self.tele if self.tele.count else self.alarm
            if not victim.segs:
                # everything is still in RAM: flush so there is a segment to drop
                if not victim.flush(now_ms):
                    break
            victim.drops += victim.evict_oldest()
        return True

    def age_out(self, now_ms, limit_ms):
        self.alarm.age_out(now_ms, limit_ms)
        self.tele.age_out(now_ms, limit_ms)

    def poll(self, now_ms):
        """Flush due RAM tails and save moved cursors; True if flash was written."""
        wrote = False
        for lane in (self.alarm, self.tele):
            if lane.flush_due(now_ms, self.flush_age_ms) and lane.flush(now_ms):
                wrote = True
        if self._cursor_saved_ms is None:
            self._cursor_saved_ms = now_ms
        if ticks_diff(now_ms, self._cursor_saved_ms) >= self.cursor_save_ms:
            self._cursor_saved_ms = now_ms
            for lane in (self.alarm, self.tele):
                if lane.dirty and lane.save_cursor():
                    wrote = True
        return wrote

    def sync(self):
        """Flush RAM and save cursors now (before a planned reboot); returns
        how many records are still only in RAM (the flash refused them)."""
        unsaved = 0
        for lane in (self.alarm, self.tele):
            if lane.ram_count and not lane.flush():
                unsaved += lane.ram_count
            if lane.dirty:
                lane.save_cursor()
        return unsaved

    def rewind(self):
        self.alarm.rewind()
        self.tele.rewind()
