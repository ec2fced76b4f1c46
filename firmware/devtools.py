"""Host-side tools (CPython only): provision a flash directory, synthesise
NMEA for a moving receiver, run a unix-port device process with its GNSS
pseudo-terminal and control socket, collect what reaches the broker.

Used by the tests, the bench and firmware/flash.py; never shipped to a
device.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def provision(flash_dir, device_id, kind="recorder", key=None, port=1883,
              host="127.0.0.1", params=None, outbox=None, broker_extra=None,
              key_id=0) -> bytes:
    """Write config.json and key.hex into a (new) flash directory."""
    flash = Path(flash_dir)
    flash.mkdir(parents=True, exist_ok=True)
    key = key if key is not None else os.urandom(32)
    broker = {"host": host, "port": port}
    broker.update(broker_extra or {})
    cfg = {"device_id": device_id, "kind": kind, "key_id": key_id, "broker": broker}
    if params:
        cfg["params"] = params
    if outbox:
        cfg["outbox"] = outbox
    (flash / "config.json").write_text(json.dumps(cfg, indent=1))
    (flash / "key.hex").write_text(key.hex())
    return key


def _checksum(body: str) -> str:
    c = 0
    for ch in body.encode():
        c ^= ch
    return "%02X" % c


def sentence(body: str) -> bytes:
    return ("$%s*%s\r\n" % (body, _checksum(body))).encode()


def _ddmm(value: float, lat: bool) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    v = abs(value)
    deg = int(v)
    minutes = (v - deg) * 60
    if lat:
        return "%02d%08.5f" % (deg, minutes), hemi
    return "%03d%08.5f" % (deg, minutes), hemi


def fix_sentences(lat: float, lon: float, unix_s: float, speed_kn: float = 0.0,
                  course: float = 0.0, talker: str = "GN", alt: float = 35.0,
                  sats: int = 9) -> bytes:
    """One receiver epoch: RMC, GGA and GSA for a position."""
    t = time.gmtime(unix_s)
    hms = "%02d%02d%02d.00" % (t.tm_hour, t.tm_min, t.tm_sec)
    dmy = "%02d%02d%02d" % (t.tm_mday, t.tm_mon, t.tm_year % 100)
    la, ns = _ddmm(lat, True)
    lo, ew = _ddmm(lon, False)
    rmc = "%sRMC,%s,A,%s,%s,%s,%s,%.3f,%.2f,%s,,,A" % (talker, hms, la, ns, lo, ew,
                                                       speed_kn, course, dmy)
    gga = "%sGGA,%s,%s,%s,%s,%s,1,%02d,0.9,%.1f,M,8.3,M,," % (talker, hms, la, ns, lo, ew,
                                                             sats, alt)
    gsa = "%sGSA,A,3,02,03,04,05,06,07,,,,,,,1.6,0.9,1.3" % talker
    return sentence(rmc) + sentence(gga) + sentence(gsa)


def no_fix_sentences(unix_s: float, talker: str = "GN") -> bytes:
    t = time.gmtime(unix_s)
    hms = "%02d%02d%02d.00" % (t.tm_hour, t.tm_min, t.tm_sec)
    return sentence("%sRMC,%s,V,,,,,,,,,,N" % (talker, hms)) + sentence(
        "%sGGA,%s,,,,,0,00,,,M,,M,," % (talker, hms))


class Track:
    """A receiver moving in a straight line at ``speed_ms`` (defaults: 36 km/h)."""

    def __init__(self, lat=31.2479, lon=121.5874, speed_ms=10.0, course=45.0):
        self.lat = lat
        self.lon = lon
        self.speed_ms = speed_ms
        self.course = course

    def step(self, dt_s: float) -> None:
        d = self.speed_ms * dt_s
        self.lat += d * math.cos(math.radians(self.course)) / 111319.5
        self.lon += d * math.sin(math.radians(self.course)) / (
            111319.5 * math.cos(math.radians(self.lat)))

    def sentences(self, unix_s: float) -> bytes:
        return fix_sentences(self.lat, self.lon, unix_s, self.speed_ms / 0.514444,
                             self.course)


def micropython_binary() -> str:
    here = Path(sys.executable).parent / "micropython"
    return str(here) if here.exists() else "micropython"


class UnixDevice:
    """A firmware process on the MicroPython unix port with a GNSS pty.

    ``feed(bytes)`` writes NMEA into the pty, ``control("sos 1")`` sends a
    control line, ``lines`` collects stdout; ``kill()`` is SIGKILL."""

    def __init__(self, flash_dir, heap: str | None = None, interpreter: str | None = None,
                 extra_args: tuple[str, ...] = (), build_dir=None):
        """``build_dir``: run a ``make firmware BOARD=unix`` build (.mpy) instead
        of the sources (needed for small heaps: compiling needs more RAM)."""
        self.flash = Path(flash_dir)
        self.ctl_path = str(self.flash / "ctl.sock")
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.pty_name = os.ttyname(self.slave)
        cmd = [interpreter or micropython_binary()]
        if heap:
            cmd += ["-X", "heapsize=" + heap]
        base = Path(build_dir) if build_dir else ROOT
        entry = base / "main_unix.py" if build_dir else ROOT / "firmware" / "main_unix.py"
        cmd += [str(entry), "--flash", str(self.flash),
                "--uart", self.pty_name, "--ctl", self.ctl_path, *extra_args]
        env = dict(os.environ)
        env["MICROPYPATH"] = str(base) + ":.frozen"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(ROOT))
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._ctl = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def _read(self) -> None:
        if self.proc.stdout is None:
            return
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._cond.notify_all()

    def wait_line(self, needle: str, timeout: float = 20.0, start: int = 0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ln in self.lines[start:]:
                    if needle in ln:
                        return ln
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(self.lines[-30:])
                    raise TimeoutError("no %r in output:\n%s" % (needle, tail))
                self._cond.wait(min(left, 0.2))

    def feed(self, data: bytes) -> None:
        os.write(self.master, data)

    def control(self, line: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._ctl.sendto(line.encode(), self.ctl_path)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self._ctl.close()
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> UnixDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Collector:
    """Subscribes to ft/v1/# on a broker and keeps (topic, payload) in order."""

    def __init__(self, port: int, topic: str = "ft/v1/#", host: str = "127.0.0.1",
                 persistent: bool = False):
        """``persistent``: a session the broker keeps (with broker persistence
        it survives a broker restart, so nothing published meanwhile is missed)."""
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="collector-%d-%s" % (os.getpid(), os.urandom(3).hex()),
                                  clean_session=not persistent)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(0.1, 0.5)
        self._subscribed = False
        self.client.connect(host, port)
        self.client.loop_start()
        self.wait(lambda m: self._subscribed, 10)

    def _on_subscribe(self, *args) -> None:
        with self._cond:
            self._subscribed = True
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait(self, predicate, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = predicate(self.messages)
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("condition not met; %d messages" % len(self.messages))
                self._cond.wait(min(left, 0.2))

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def prefill_backlog(flash_dir, seconds: int, unix_s: int | None = None) -> int:
    """Run the device core (CPython, simulated board, no network) over a
    moving track for ``seconds`` of simulated time, leaving its backlog on
    flash; returns the outbox depth. The config must already be provisioned."""
    from firmware.app.factory import make_device
    from firmware.boards.sim import NoLink, SimBoard, SimClock

    clock = SimClock(unix_s=unix_s if unix_s is not None else int(time.time()) - seconds)
    board = SimBoard(str(flash_dir), clock=clock, link=NoLink())
    dev = make_device(board, 0)
    track = Track()
    for _ in range(seconds * 2):
        clock.advance(500)
        if clock.ms % 1000 == 0:
            track.step(1)
            board.uart.feed(track.sentences(clock.time()))
        dev.poll(clock.ms)
    dev.outbox.sync()
    return int(dev.outbox.depth)
