"""Sliding replay window per (device, lane), as in IPsec/DTLS.

One counter per device numbers every record it sends: (boot epoch, seq).
The receiver keeps a window per *lane* (telemetry, alarm, status, ack,
command) because a device sends each lane in order but lanes overtake each
other: an alarm may jump a backlog of thousands of fixes, and a last will is
signed at connect but published later. Within a lane only MQTT resends and
in-flight reordering remain, which a 128-record window absorbs.

Check the window only after the tag verified, then mark: an unauthenticated
message never moves a window, and an authentic repeat is a ``duplicate``
(QoS 1 redelivery, device resend), not an attack. A record older than the
window, or from an older epoch, is ``replayed``: its acceptance cannot be
told apart from a replay any more.
"""

import struct

from protocol.errors import DUPLICATE, REPLAYED, FreshnessError
from protocol.topics import (
    KIND_ACK, KIND_ALARM, KIND_CMD, KIND_GPS, KIND_HB, KIND_STATUS,
)

WINDOW = 128
_MASK = (1 << WINDOW) - 1

LANE_TELEMETRY = 0
LANE_ALARM = 1
LANE_STATUS = 2
LANE_ACK = 3
LANE_CMD = 4
LANE_BY_KIND = {KIND_GPS: LANE_TELEMETRY, KIND_HB: LANE_TELEMETRY,
                KIND_ALARM: LANE_ALARM, KIND_STATUS: LANE_STATUS,
                KIND_ACK: LANE_ACK, KIND_CMD: LANE_CMD}
STATE_LEN = 24


class ReplayWindow:
    """Immutable: ``marked`` returns a new window. ``bits`` bit i = top - i seen."""

    __slots__ = ("epoch", "top", "bits")

    def __init__(self, epoch=-1, top=0, bits=0):
        self.epoch = epoch
        self.top = top
        self.bits = bits

    def check(self, epoch, seq):
        """Raise FreshnessError unless (epoch, seq) is new to this window."""
        if epoch > self.epoch:
            return
        if epoch < self.epoch:
            raise FreshnessError(REPLAYED, "epoch %d < %d" % (epoch, self.epoch))
        if seq > self.top:
            return
        back = self.top - seq
        if back >= WINDOW:
            raise FreshnessError(REPLAYED, "seq %d below window" % seq)
        if (self.bits >> back) & 1:
            raise FreshnessError(DUPLICATE, "seq %d" % seq)

    def marked(self, epoch, seq):
        if epoch > self.epoch:
            return ReplayWindow(epoch, seq, 1)
        if seq > self.top:
            shift = seq - self.top
            bits = ((self.bits << shift) | 1) & _MASK if shift < WINDOW else 1
            return ReplayWindow(epoch, seq, bits)
        if epoch < self.epoch or self.top - seq >= WINDOW:
            return self  # check() refuses these; nothing to remember
        return ReplayWindow(epoch, self.top,
                            self.bits | (1 << (self.top - seq)))

    def to_bytes(self):
        if self.epoch < 0:
            return b""
        return struct.pack(">II", self.epoch, self.top) + self.bits.to_bytes(16, "big")

    @staticmethod
    def from_bytes(data):
        """Restore a saved window; b"" is the empty window."""
        if not data:
            return ReplayWindow()
        if len(data) != STATE_LEN:
            raise ValueError("replay window state must be 24 bytes")
        epoch, top = struct.unpack_from(">II", data, 0)
        return ReplayWindow(epoch, top, int.from_bytes(bytes(data[8:]), "big"))

    def __eq__(self, other):
        return (isinstance(other, ReplayWindow) and self.epoch == other.epoch
                and self.top == other.top and self.bits == other.bits)

    def __repr__(self):
        return "ReplayWindow(%d, %d, %x)" % (self.epoch, self.top, self.bits)
