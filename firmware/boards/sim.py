"""A simulated board for CPython: manual clock, fed UART, settable inputs.

Small on purpose; the fleet simulator builds on the same parts. Example::

    board = SimBoard("/tmp/dev1")            # flash root with config.json, key.hex
    dev = make_device(board, board.clock.ticks_ms())
    board.uart.feed(b"$GNRMC,...\\r\\n")
    board.inputs.set("sos", 1)
    board.clock.advance(1000); dev.poll(board.clock.ticks_ms())

``link`` is a real TcpLink (a broker on localhost) unless ``link=`` is
given; ``NoLink`` stands for a device that never gets a network.
"""

from firmware.app import compat
from firmware.app.store import FlashStore
from firmware.boards.base import Battery, Inputs, NullWatchdog
from firmware.boards.tcplink import TcpLink


class SimClock:
    def __init__(self, start_ms=0, unix_s=1767225600, synced=True):
        self.ms = start_ms
        self.unix0 = unix_s
        self.synced = synced
        self._offset = 0

    def ticks_ms(self):
        """``ms`` as a board's tick: wraps like an ESP32 when a test sets
        ``compat.TICKS_PERIOD`` (``ms`` itself keeps counting)."""
        p = compat.TICKS_PERIOD
        return self.ms & (p - 1) if p else self.ms

    def advance(self, ms):
        self.ms += ms

    def time(self):
        return self.unix0 + self.ms // 1000 + self._offset

    def set_time(self, unix_s):
        self._offset = unix_s - (self.unix0 + self.ms // 1000)
        self.synced = True


class BufferUart:
    def __init__(self):
        self.pending = bytearray()

    def feed(self, data):
        self.pending.extend(data)

    def readinto(self, buf):
        n = min(len(buf), len(self.pending))
        buf[:n] = self.pending[:n]
        del self.pending[:n]
        return n


class NoLink:
    signal = -128

    def up(self):
        return False

    def set_up(self, up):
        pass

    def signal_dbm(self):
        return -128

    def open(self, host, port, tls, timeout_ms):
        raise OSError(101, "no network")


class SimBoard:
    def __init__(self, flash_dir, clock=None, link=None, reset_cause=0, log=None):
        self.store = FlashStore(flash_dir)
        self.clock = clock or SimClock()
        self.uart = BufferUart()
        self.inputs = Inputs()
        self.battery = Battery()
        self.storage_mib = 30000
        self.link = link if link is not None else TcpLink(flash_dir)
        self.watchdog = NullWatchdog()
        self._reset = reset_cause
        self.logs = []
        self._log = log
        self.rebooted = False
        self.powered_off = False
        self._rand = 1

    def reset_cause(self):
        return self._reset

    def storage_free_mib(self):
        return self.storage_mib

    def random8(self):
        self._rand = (self._rand * 1103515245 + 12345) & 0x7FFFFFFF
        return self._rand >> 16 & 0xFF

    def log(self, line):
        self.logs.append(line)
        if self._log:
            self._log(line)

    def reboot(self):
        self.rebooted = True

    def power_off(self):
        self.powered_off = True
