"""The MicroPython unix port as a board (also runs under CPython).

    micropython firmware/main_unix.py --flash DIR --uart PATH [--ctl PATH]
        [--unsynced] [--trace] [--uart-rate BYTES_PER_S]

``--flash``  directory standing in for the flash filesystem (config.json,
             key.hex, state, outbox).
``--uart``   the GNSS receiver: a pseudo-terminal (the simulator writes NMEA
             into its master side; put it in raw mode) or a file replayed
             at ``--uart-rate`` bytes per second (default 1000, 9600 baud).
``--ctl``    a unix datagram socket the board binds; each datagram is one
             control line (firmware/boards/base.py parse_control):
             ``sos 1``, ``strap open``, ``link down``, ``battery 15``,
             ``recording 1``, ``storage 100``, ``power off``, ``reboot``.
``--trace``  log one line per record signed and per flash flush (tests).
``--unsynced``  start with the clock marked never set (the host clock is
             normally NTP-synced, so records are not flagged by default).

Exit codes: 0 power off, 3 watchdog reset, 4 reboot (a supervisor restarts
the process: that is the reboot). The reset cause of the next boot is kept
in ``.reset`` in the flash directory: ``running`` left behind by a process
that died (SIGKILL = power loss) reads as power_on.
"""

import gc
import os
import select
import socket
import struct
import sys
import time

from firmware.app.compat import UNIX_OFFSET, ticks_diff, ticks_ms
from firmware.app.store import FlashStore
from firmware.boards.base import Battery, Inputs, SoftWatchdog, apply_control, parse_control
from firmware.boards.tcplink import TcpLink

try:
    import random
except ImportError:  # pragma: no cover
    random = None

_CPYTHON = sys.implementation.name == "cpython"
RESET_CODES = {"running": 0, "poweroff": 0, "watchdog": 2, "soft": 4}
EXIT_POWER_OFF = 0
EXIT_WATCHDOG = 3
EXIT_REBOOT = 4


class UnixClock:
    def __init__(self, synced=True):
        self.synced = synced
        self.offset = 0

    def ticks_ms(self):
        return ticks_ms()

    def time(self):
        return int(time.time()) + UNIX_OFFSET + self.offset

    def set_time(self, unix_s):
        self.offset = unix_s - (int(time.time()) + UNIX_OFFSET)
        self.synced = True


class PtyUart:
    """Non-blocking reads from a tty: MicroPython's FileIO.readinto waits
    for the whole buffer, so bytes are taken one at a time while poll says
    more are waiting (about 1 us each; a GNSS sends ~1 kB/s)."""

    def __init__(self, path):
        self.f = open(path, "rb")
        self._poll = select.poll()
        self._poll.register(self.f, select.POLLIN)
        self._one = bytearray(1)
        self.fd = self.f

    def readinto(self, buf):
        n = 0
        one = self._one
        lim = len(buf)
        while n < lim and self._poll.poll(0):
            if not self.f.readinto(one):
                break
            buf[n] = one[0]
            n += 1
        return n


class FileUart:
    """Replays a capture file at ``rate`` bytes per second."""

    def __init__(self, path, rate):
        self.f = open(path, "rb")
        self.rate = rate
        self.t0 = ticks_ms()
        self.sent = 0
        self.fd = None

    def readinto(self, buf):
        allowed = ticks_diff(ticks_ms(), self.t0) * self.rate // 1000 - self.sent
        if allowed <= 0:
            return 0
        n = self.f.readinto(memoryview(buf)[:min(allowed, len(buf))]) or 0
        self.sent += n
        return n


def _unix_addr(path):
    if _CPYTHON:
        return path
    return struct.pack("H", socket.AF_UNIX) + path.encode() + b"\x00"


class ControlChannel:
    def __init__(self, path):
        try:
            os.remove(path)
        except OSError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(_unix_addr(path))
        self._poll = select.poll()
        self._poll.register(self.sock, select.POLLIN)

    def lines(self):
        out = []
        while self._poll.poll(0) and len(out) < 16:
            data = self.sock.recv(128)
            try:
                out.append(data.decode())
            except UnicodeError:
                out.append("?")
        return out


class UnixBoard:
    def __init__(self, flash, uart, ctl=None, synced=True, uart_rate=1000, trace=False):
        self.trace = trace
        self.store = FlashStore(flash)
        self.clock = UnixClock(synced)
        st = os.stat(uart)
        if st[0] & 0o170000 == 0o100000:         # regular file: replay it
            self.uart = FileUart(uart, uart_rate)
        else:
            self.uart = PtyUart(uart)
        self.ctl = ControlChannel(ctl) if ctl else None
        self.inputs = Inputs()
        self.battery = Battery()
        self.storage_mib = 30000
        self.link = TcpLink(flash)
        self.watchdog = SoftWatchdog(self.clock)
        self._reset = self._read_reset_marker()
        self.store.write_atomic(".reset", b"running")
        self.hang = False
        self.code_heap = 0
        self.live_peak = 0

    def _read_reset_marker(self):
        raw = self.store.read(".reset", 32)
        if raw is None:
            return 0
        return RESET_CODES.get(raw.decode().strip(), 255)

    def reset_cause(self):
        return self._reset

    def storage_free_mib(self):
        return self.storage_mib

    def random8(self):
        return random.getrandbits(8) if random else 128

    def log(self, line):
        print(line)

    def _exit(self, marker, code):
        self.store.write_atomic(".reset", marker)
        sys.exit(code)

    def reboot(self):
        self._exit(b"soft", EXIT_REBOOT)

    def power_off(self):
        self._exit(b"poweroff", EXIT_POWER_OFF)

    def control(self, line):
        try:
            name, value = parse_control(line)
        except ValueError as e:
            self.log("W control %r refused: %s" % (line[:40], e))
            return
        self.log("I control %s %d" % (name, value))
        if name == "reboot":
            self.reboot()
        elif name == "stats":
            self.log_stats()
        elif name == "hang":
            self.hang = True          # stop checking in: tests the watchdog
        elif name == "power_off":
            self.inputs.set("power_off", 1)
        else:
            apply_control(self, name, value)

    def _is_uart(self, obj):
        fd = self.uart.fd
        if fd is None:
            return False
        return obj is fd or obj == fd or (_CPYTHON and obj == fd.fileno())

    def log_stats(self):
        """Heap figures (bench, memory tests): peak is the high-water mark."""
        gc.collect()
        self._note_heap()
        self.log("I stats heap_used %d heap_free %d live_peak %d code %d" % (
            gc.mem_alloc(), gc.mem_free(), self.live_peak, self.code_heap))

    def _note_heap(self):
        used = gc.mem_alloc()
        if used > self.live_peak:
            self.live_peak = used

    def run(self, device):
        """The main loop: poll the device, wait on UART, socket, control."""
        poller = select.poll()
        if self.uart.fd is not None:
            poller.register(self.uart.fd, select.POLLIN)
        if self.ctl is not None:
            poller.register(self.ctl.sock, select.POLLIN)
        registered = None
        while True:
            now = ticks_ms()
            if not self.hang:
                delay = device.poll(now)
            else:
                delay = 100
            if self.watchdog.expired(now, ticks_diff):
                self.log("E watchdog: no feed for %d ms, reset" % self.watchdog.timeout_ms)
                self._exit(b"watchdog", EXIT_WATCHDOG)
            if self.ctl is not None:
                for line in self.ctl.lines():
                    self.control(line)
            t = self.link.transport
            sock = t.sock if t is not None and t.established else None
            if sock is not registered:
                if registered is not None:
                    try:
                        poller.unregister(registered)
                    except (OSError, KeyError, ValueError):
                        pass
                if sock is not None:
                    poller.register(sock, select.POLLIN)
                registered = sock
            if delay > 0:
                for ev in poller.poll(delay):
                    if ev[1] & (select.POLLHUP | select.POLLERR) and self._is_uart(ev[0]):
                        # the simulator closed the pty: no GNSS, but no busy loop
                        poller.unregister(self.uart.fd)
                        self.log("W gnss uart hung up")
            if delay >= 200:
                gc.collect()         # at a known idle point, not mid-burst
                self._note_heap()    # live data high-water mark (after collection)


def parse_args(argv):
    opts = {"flash": None, "uart": None, "ctl": None, "synced": True, "uart_rate": 1000,
            "trace": False}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--unsynced", "--trace"):
            opts["synced" if a == "--unsynced" else "trace"] = a == "--trace"
            i += 1
            continue
        if i + 1 >= len(argv):
            raise ValueError("missing value for " + a)
        v = argv[i + 1]
        if a == "--flash":
            opts["flash"] = v
        elif a == "--uart":
            opts["uart"] = v
        elif a == "--ctl":
            opts["ctl"] = v
        elif a == "--uart-rate":
            opts["uart_rate"] = int(v)
        else:
            raise ValueError("unknown option " + a)
        i += 2
    if not opts["flash"] or not opts["uart"]:
        raise ValueError("--flash and --uart are required")
    return opts


def main(argv):
    from firmware.app.factory import make_device
    try:
        opts = parse_args(argv)
    except ValueError as e:
        print("usage: main_unix.py --flash DIR --uart PATH [--ctl PATH] [--unsynced]:", e)
        sys.exit(2)
    board = UnixBoard(opts["flash"], opts["uart"], opts["ctl"], opts["synced"],
                      opts["uart_rate"], opts["trace"])
    # load every module the device will use, then note what the code costs
    import firmware.app.recorder  # noqa: F401
    import firmware.app.wristband  # noqa: F401
    gc.collect()
    board.code_heap = gc.mem_alloc()
    device = make_device(board, ticks_ms())
    board.run(device)
