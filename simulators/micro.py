"""A fleet member that is a real MicroPython process (the unix port).

The firmware runs as ``micropython firmware/main_unix.py`` with its GNSS
UART on a pseudo-terminal: a feeder thread writes the virtual receiver's
NMEA into the pty master once a second, and the control socket takes the
same lines as the in-process boards (``sos 1``, ``link down``…). The
firmware's ``--trace`` lines say what it signed; they go to the ProducedLog.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from firmware.devtools import UnixDevice
from protocol.topics import NAME_BY_KIND
from simulators.checker import ProducedLog
from simulators.fleet import DeviceSpec
from simulators.gnss import GnssConfig, GnssReceiver
from simulators.routes import make_route


class MicroDevice:
    def __init__(self, spec: DeviceSpec, flash: Path, produced: ProducedLog,
                 workdir: Path) -> None:
        self.spec = spec
        self.flash = Path(flash)
        self.produced = produced
        route_kind = "wristband" if spec.kind == "wristband" else "foot"
        self.receiver = GnssReceiver(make_route(route_kind, spec.seed), spec.seed,
                                     GnssConfig(cold_start_s=(3.0, 8.0)))
        self.dev: UnixDevice | None = None
        self._seen = 0
        self._stop = threading.Event()
        self._feeder: threading.Thread | None = None
        self.records = 0
        self.errors: list[str] = []

    def start(self) -> None:
        self.dev = UnixDevice(self.flash, extra_args=("--trace",))
        self._seen = 0
        self._stop.clear()
        self.receiver.power_on(time.time(), "warm" if self.records else "cold")
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        dev = self.dev
        next_at = time.time()
        while not self._stop.is_set() and dev is not None:
            data = b"".join(self.receiver.sentences(next_at))
            try:
                os.write(dev.master, data)
            except OSError:
                return
            next_at += 1.0
            self._stop.wait(max(0.0, next_at - time.time()))

    def pump(self) -> None:
        """Take the process's new output lines: trace lines become produced records."""
        dev = self.dev
        if dev is None:
            return
        lines = dev.lines[self._seen:]
        self._seen += len(lines)
        for line in lines:
            parts = line.split()
            if len(parts) >= 5 and parts[0] == "T" and parts[1] in ("rec", "live"):
                try:
                    kind, epoch, seq = int(parts[2]), int(parts[3]), int(parts[4])
                except ValueError:
                    continue
                self.produced.record(self.spec.device_id, NAME_BY_KIND.get(kind, str(kind)),
                                     epoch, seq, time.time(), expect=parts[1] == "rec")
                self.records += 1
            elif line.startswith("E "):
                self.errors.append(line)

    def control(self, line: str) -> None:
        if self.dev is not None:
            self.dev.control(line)

    def power_cut(self) -> None:
        """SIGKILL: the process dies as a board does when its power goes."""
        self.pump()
        self._stop.set()
        if self.dev is not None:
            self.dev.stop()
            self.dev = None

    def alive(self) -> bool:
        return self.dev is not None and self.dev.proc.poll() is None

    def stop(self) -> None:
        self.pump()
        self._stop.set()
        if self.dev is not None:
            self.dev.stop()
            self.dev = None
