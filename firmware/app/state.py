"""Persistent device state: the record counter and the command window.

Record numbering. Every record the device signs carries (boot epoch, seq)
from one counter. The epoch is bumped and written to flash at every boot
*before* the first record is signed, and seq restarts at 0; seq never
wraps (at 2**32 - 1 the epoch is bumped again). So whatever a crash or a
power cut loses, a number is never signed twice under the same key: after
a reboot every number is in a newer epoch. That is the skip-ahead of the
issue with a chunk of a whole epoch, and it costs two small writes per boot
instead of one write every N records.

The epoch lives in two slots, ``epoch.0`` and ``epoch.1``, each
(generation u32, epoch u32, crc32 u32), written alternately: a torn write
can only damage the slot being written, and the other one still holds the
previous epoch (which the new boot bumps past again).

Alarm state. Whether an alarm is active (fast reporting until a
clear_alarm) and the strap state last reported live in ``alarm`` (active
u8, strap u8, 2 zero bytes, crc32), replaced atomically when they change:
a reboot keeps fast reporting, and a strap cut while the device was off is
reported at the next boot.

Recent commands. The results of the last 8 commands live in ``cmddone``
so that an authentic repeat is answered after a reboot too.
"""

import struct

import binascii

from protocol.replay import ReplayWindow

_SLOT = ">III"
SEQ_LIMIT = 0xFFFFFFFF


def _crc(data):
    return binascii.crc32(data) & 0xFFFFFFFF


class StateError(Exception):
    pass


class RecordCounter:
    """(epoch, seq) for the records this device signs."""

    def __init__(self, store):
        self._store = store
        self.generation = 0
        self.epoch = 0
        self.seq = 0
        self._slot = 0

    def _read_slot(self, i):
        data = self._store.read("epoch.%d" % i, 64)
        if data is None or len(data) != 12:
            return None
        gen, epoch, crc = struct.unpack(_SLOT, data)
        if _crc(data[:8]) != crc:
            return None
        return gen, epoch

    def boot(self):
        """Bump the epoch durably; call before signing anything."""
        best = None
        for i in (0, 1):
            slot = self._read_slot(i)
            if slot is not None and (best is None or slot[0] > best[0]):
                best = slot
                self._slot = i
        if best is not None:
            self.generation, self.epoch = best
        self._bump()

    def _bump(self):
        if self.epoch >= SEQ_LIMIT:
            raise StateError("epoch space exhausted: provision a new key")
        self.generation += 1
        self.epoch += 1
        self.seq = 0
        self._slot ^= 1
        head = struct.pack(">II", self.generation, self.epoch)
        self._store.write_atomic("epoch.%d" % self._slot,
                                 head + struct.pack(">I", _crc(head)))
        got = self._read_slot(self._slot)
        if got is None or got[1] != self.epoch:
            raise StateError("epoch slot did not read back")

    def next_seq(self):
        """The seq for the next record (in ``self.epoch``)."""
        if self.seq >= SEQ_LIMIT:
            self._bump()
        s = self.seq
        self.seq = s + 1
        return s


class CommandWindow:
    """The replay window of the command lane, saved after every command."""

    NAME = "cmdwin"

    def __init__(self, store):
        self._store = store
        self.window = ReplayWindow()
        data = store.read(self.NAME, 64)
        if data and len(data) == 28 and _crc(data[:24]) == struct.unpack(">I", data[24:])[0]:
            self.window = ReplayWindow.from_bytes(data[:24])

    def save(self, window):
        self.window = window
        raw = window.to_bytes()
        if raw:
            self._store.write_atomic(self.NAME, raw + struct.pack(">I", _crc(raw)))


class RecentCommands:
    """The results of the last few commands, kept across reboots: a repeat
    of a command whose ack was lost (in a reboot the command itself caused,
    say) is answered with the first result, not with silence. ``cmddone``
    holds up to SIZE (epoch u32, seq u32, result u8) and a crc32."""

    NAME = "cmddone"
    SIZE = 8

    def __init__(self, store):
        self._store = store
        self.entries = []
        data = store.read(self.NAME, 9 * self.SIZE + 4)
        if (data and len(data) % 9 == 4
                and _crc(data[:-4]) == struct.unpack(">I", data[-4:])[0]):
            for off in range(0, len(data) - 4, 9):
                self.entries.append(struct.unpack_from(">IIB", data, off))

    def add(self, epoch, seq, result):
        """Remember a result (oldest evicted). Raises OSError if the flash
        refuses; the entry is kept in RAM all the same."""
        if len(self.entries) >= self.SIZE:
            self.entries.pop(0)
        self.entries.append((epoch, seq, result))
        raw = b"".join(struct.pack(">IIB", e, s, r) for e, s, r in self.entries)
        self._store.write_atomic(self.NAME, raw + struct.pack(">I", _crc(raw)))

    def result_of(self, epoch, seq):
        for e, s, r in self.entries:
            if e == epoch and s == seq:
                return r
        return None


class AlarmState:
    """Active alarm and last reported strap state, kept across reboots."""

    NAME = "alarm"

    def __init__(self, store):
        self._store = store
        self.active = False
        self.strap = 0
        data = store.read(self.NAME, 64)
        if data and len(data) == 8 and _crc(data[:4]) == struct.unpack(">I", data[4:])[0]:
            self.active = bool(data[0])
            self.strap = data[1]
        self._saved = True

    @property
    def saved(self):
        return self._saved

    def save(self, active, strap):
        """Write if changed (or not yet written); raises OSError."""
        if self._saved and active == self.active and strap == self.strap:
            return
        self.active = active
        self.strap = strap
        self._saved = False
        raw = bytes((1 if active else 0, strap & 0xFF, 0, 0))
        self._store.write_atomic(self.NAME, raw + struct.pack(">I", _crc(raw)))
        self._saved = True
