"""Many devices in one CPython process, running the firmware's own app code.

Each device is the real ``firmware.app`` Recorder or Wristband over a
``FleetBoard``: a real-time clock, a virtual GNSS receiver on a seeded route
(simulators.gnss), settable inputs and battery, and a real TCP (or TLS)
link to the local broker. One scheduler steps them all: a device is polled
when the time it asked for has come or when its socket has something to
read (one epoll over every connection), so an idle device costs nothing
between its 1 Hz GNSS reads.

What each device signs is written to a ProducedLog (simulators.checker):
the firmware traces every record it signs (``T rec`` stored, ``T live``
status and acks), and the
records a power cut takes out of RAM before they reached flash are written
as evicted with reason ``power_cut_ram_tail`` — the firmware's documented
flash-wear trade-off, kept apart from loss.
"""

from __future__ import annotations

import heapq
import random
import json
import os
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware.app.factory import make_device
from firmware.app.store import FlashStore
from firmware.boards.base import Inputs, NullWatchdog, apply_control, parse_control
from firmware.devtools import provision
from protocol.codec import decode_header
from protocol.errors import ProtocolError
from protocol.topics import NAME_BY_KIND
from simulators.checker import ProducedLog
from simulators.gnss import GnssConfig, GnssReceiver, GnssUart
from simulators.hardware import DrainingBattery, ImpairedLink
from simulators.routes import make_route

MAX_SLEEP_MS = 1000        # GNSS delivers once a second; a device never sleeps longer
RAM_TAIL_REASON = "power_cut_ram_tail"
LATENESS_RING = 20000


class FleetClock:
    """Real time; ``skew_s`` shifts the device's idea of UTC (a bad RTC/NTP)."""

    def __init__(self, synced: bool = False) -> None:
        self.synced = synced
        self.offset = 0
        self.skew_s = 0

    def ticks_ms(self) -> int:
        return int(time.monotonic() * 1000)

    def time(self) -> int:
        return int(time.time()) + self.offset + self.skew_s

    def set_time(self, unix_s: int) -> None:
        self.offset = unix_s - int(time.time())
        self.synced = True


class FleetBoard:
    """The board interface of firmware/boards/base.py for one simulated device."""

    trace = True

    def __init__(self, sim: SimDevice, reset_cause: int) -> None:
        self.sim = sim
        self.store = FlashStore(str(sim.flash))
        self.clock = sim.clock
        self.uart = sim.uart
        self.inputs = sim.inputs
        self.battery = sim.battery
        self.link = sim.link
        self.watchdog = NullWatchdog()
        self.storage_mib = sim.storage_mib
        self._reset = reset_cause

    def reset_cause(self) -> int:
        return self._reset

    def storage_free_mib(self) -> int:
        return self.storage_mib

    def random8(self) -> int:
        return os.urandom(1)[0]

    def log(self, line: str) -> None:
        self.sim.on_log(line)

    def reboot(self) -> None:
        self.sim.want_reboot = True

    def power_off(self) -> None:
        self.sim.want_power_off = True


@dataclass
class SimDevice:
    """One device of the fleet: its hardware state survives the app's reboots."""

    device_id: str
    kind: str
    flash: Path
    seed: int
    produced: ProducedLog
    clock: FleetClock = field(default_factory=FleetClock)
    inputs: Inputs = field(default_factory=Inputs)
    storage_mib: int = 30000
    log_sink: Callable[[str, str], None] | None = None

    def __post_init__(self) -> None:
        route_kind = "wristband" if self.kind == "wristband" else (
            "vehicle" if self.seed % 3 == 0 else "foot")
        self.receiver = GnssReceiver(make_route(route_kind, self.seed), self.seed,
                                     GnssConfig(cold_start_s=(3.0, 8.0)))
        self.uart = GnssUart(self.receiver)
        self.link = ImpairedLink(str(self.flash), self.seed)
        start = 45 + random.Random("battery:%d" % self.seed).random() * 55
        self.battery = DrainingBattery(self.kind, start,
                                       recording=lambda: self.inputs.get("recording"))
        self.app: Any = None
        self.powered = False
        self.want_reboot = False
        self.want_power_off = False
        self.records = 0
        self.errors = 0
        self.boots = 0
        self.next_due = 0
        self.index = 0
        self.quiesced = False

    # ---- lifecycle ----
    def boot(self, now_ms: int, reset_cause: int = 0) -> None:
        self.want_reboot = self.want_power_off = False
        self.receiver.power_on(time.time(), "warm" if self.boots else "cold")
        self.uart.powered = True
        self.app = make_device(FleetBoard(self, reset_cause), now_ms)
        self.powered = True
        self.boots += 1

    def power_cut(self) -> int:
        """Power lost now: the socket dies without DISCONNECT, the RAM tail is gone."""
        lost = 0
        app = self.app
        if app is not None and getattr(app, "idle_reason", None) is None:
            for lane in (app.outbox.alarm, app.outbox.tele):
                lost += self._log_ram_tail(bytes(lane.ram[:lane.ram_len]))
            transport = app.mqtt.transport
            if transport is not None:
                transport.close()
        self.app = None
        self.powered = False
        self.uart.powered = False
        self.receiver.power_off()
        return lost

    def _log_ram_tail(self, ram: bytes) -> int:
        """Frames are 0xA5 | len | envelope | crc32 (firmware/app/outbox.py)."""
        off = n = 0
        while off + 2 <= len(ram) and ram[off] == 0xA5:
            length = ram[off + 1]
            try:
                env = decode_header(ram[off + 2:off + 2 + length])
            except ProtocolError:
                break
            self.produced.evicted(self.device_id, env.epoch, env.seq, time.time(),
                                  RAM_TAIL_REASON)
            n += 1
            off += 2 + length + 4
        return n

    # ---- stepping ----
    def poll(self, now_ms: int) -> int:
        if not self.powered:
            return MAX_SLEEP_MS
        if self.quiesced:
            return self._drain_step(now_ms)
        self.uart.advance(time.time())
        sleep = self.app.poll(now_ms)
        if self.want_reboot or self.want_power_off:
            off = self.want_power_off
            self.power_cut()
            if not off:
                self.boot(now_ms, reset_cause=4)
        # The app asks for 200-500 ms to watch its socket; here epoll watches
        # sockets, so only short sleeps (records waiting to go out) are kept.
        if self.link.has_delayed():
            return min(sleep, 50)           # bytes held back by simulated latency
        return max(1, sleep if sleep < 200 else MAX_SLEEP_MS)

    def _drain_step(self, now_ms: int) -> int:
        """End of a run: only the network and flash tasks, so that the outbox
        empties and nothing new is captured (the checker's books can close)."""
        app = self.app
        if getattr(app, "idle_reason", None) is not None:
            return MAX_SLEEP_MS
        app._task("net", app._net, now_ms)
        app._task("store", app._store, now_ms)
        return 20 if app.outbox.depth else MAX_SLEEP_MS

    def socket(self) -> Any:
        app = self.app
        if app is None or getattr(app, "idle_reason", None) is not None:
            return None
        t = app.mqtt.transport
        return getattr(t, "sock", None) if t is not None else None

    # ---- what the firmware says ----
    def on_log(self, line: str) -> None:
        if line.startswith("T rec ") or line.startswith("T live "):
            parts = line.split()
            try:
                kind, epoch, seq = int(parts[2]), int(parts[3]), int(parts[4])
            except (IndexError, ValueError):
                return
            # Status (birth, last will) and acks are sent live, never stored:
            # best effort by design, so the checker does not expect them.
            expect = parts[1] == "rec"
            self.produced.record(self.device_id, NAME_BY_KIND.get(kind, str(kind)), epoch, seq,
                                 time.time(), expect=expect)
            self.records += 1
        elif line.startswith("T "):
            return
        else:
            if line.startswith("E "):
                self.errors += 1
            if self.log_sink is not None:
                self.log_sink(self.device_id, line)

    def control(self, line: str) -> None:
        """A control-channel line, as the unix board takes it (``sos 1``, ``link down``…)."""
        name, value = parse_control(line)
        if name == "power_off":
            self.inputs.set("power_off", 1)
            return
        if name == "reboot":
            self.want_reboot = True
            return
        if name == "battery":
            self.battery.set_level(value)
            return
        holder = _BoardView(self)
        if not apply_control(holder, name, value):
            raise ValueError("control %r is not supported in the fleet" % name)
        self.storage_mib = holder.storage_mib


class _BoardView:
    """What ``apply_control`` touches, mapped onto a SimDevice's hardware."""

    def __init__(self, sim: SimDevice) -> None:
        self.inputs = sim.inputs
        self.battery = sim.battery
        self.link = sim.link
        self.storage_mib = sim.storage_mib


@dataclass(frozen=True)
class DeviceSpec:
    device_id: str
    kind: str
    key: bytes
    seed: int


def fleet_specs(recorders: int, wristbands: int, seed: int = 1) -> list[DeviceSpec]:
    """Ids and keys for a fleet: rec-0001…, wb-0001…; keys derived from the seed."""
    import hashlib
    specs: list[DeviceSpec] = []
    for prefix, kind, n in (("rec", "recorder", recorders), ("wb", "wristband", wristbands)):
        for i in range(1, n + 1):
            did = "%s-%04d" % (prefix, i)
            key = hashlib.sha256(b"fieldtrace-sim-key|%d|%s" % (seed, did.encode())).digest()
            specs.append(DeviceSpec(did, kind, key, seed * 100003 + len(specs)))
    return specs


def provision_flash(spec: DeviceSpec, flash: Path, host: str, port: int,
                    params: dict[str, int] | None = None,
                    tls_files: dict[str, bytes] | None = None, tls_format: str = "pem") -> None:
    """The files a device has on flash: config, key and, with TLS, its CA,
    certificate and key — ``der`` for MicroPython (mbedTLS), ``pem`` for the
    CPython ssl module of in-process devices."""
    broker_extra: dict[str, Any] = {}
    if tls_files is not None:
        flash.mkdir(parents=True, exist_ok=True)
        names = {n: "%s.%s" % (n, tls_format) for n in ("ca", "cert", "key")}
        for name in names.values():
            (flash / name).write_bytes(tls_files[name])
        broker_extra["tls"] = dict(names, server_hostname="localhost")
    provision(flash, spec.device_id, spec.kind, spec.key, port=port, host=host,
              params=params, broker_extra=broker_extra)


class Fleet:
    """Steps every SimDevice; ``run_for`` returns after ``seconds`` of real time."""

    def __init__(self, devices: list[SimDevice]) -> None:
        self.devices = devices
        for i, d in enumerate(devices):
            d.index = i
        self.by_id = {d.device_id: d for d in devices}
        self.sel = selectors.DefaultSelector()
        self._registered: dict[int, tuple[Any, SimDevice]] = {}
        self.heap: list[tuple[int, int]] = []
        self.polls = 0
        # how late scheduled polls ran (ms), a bounded ring: real time is kept
        # when this stays small (the GNSS reads are at 1 Hz)
        self.lateness: list[int] = []
        self._late_i = 0

    def start(self) -> None:
        now = int(time.monotonic() * 1000)
        for i, d in enumerate(self.devices):
            d.boot(now)
            d.next_due = now + i % 1000      # spread the first steps over a second
            heapq.heappush(self.heap, (d.next_due, i))

    def _poll(self, i: int, now_ms: int) -> None:
        d = self.devices[i]
        sleep = d.poll(now_ms)
        self.polls += 1
        self._watch(d)
        due = now_ms + sleep
        if due < d.next_due or d.next_due <= now_ms:
            d.next_due = due
            heapq.heappush(self.heap, (due, i))

    def _watch(self, d: SimDevice) -> None:
        sock = d.socket()
        fd = -1
        if sock is not None:
            try:
                fd = sock.fileno()
            except OSError:
                fd = -1
        old = self._registered.get(id(d))
        if old is not None and (fd < 0 or old[0] is not sock):
            try:
                self.sel.unregister(old[0])
            except (KeyError, ValueError, OSError):
                pass
            del self._registered[id(d)]
            old = None
        if fd >= 0 and old is None:
            try:
                self.sel.register(sock, selectors.EVENT_READ, d.index)
                self._registered[id(d)] = (sock, d)
            except (KeyError, ValueError, OSError):
                pass

    def run_for(self, seconds: float, on_tick: Callable[[float], None] | None = None) -> None:
        end = time.monotonic() + seconds
        next_tick = time.monotonic()
        while True:
            mono = time.monotonic()
            if mono >= end:
                return
            if on_tick is not None and mono >= next_tick:
                on_tick(mono)
                next_tick = mono + 0.25
            now_ms = int(mono * 1000)
            wait_ms = (self.heap[0][0] - now_ms) if self.heap else 50
            wait = min(max(wait_ms, 0), 50) / 1000
            for key, _ev in self.sel.select(wait):
                self._poll(key.data, int(time.monotonic() * 1000))
            now_ms = int(time.monotonic() * 1000)
            while self.heap and self.heap[0][0] <= now_ms:
                due, i = heapq.heappop(self.heap)
                if due != self.devices[i].next_due:
                    continue            # superseded by an earlier poll
                self._note_late(now_ms - due)
                self._poll(i, now_ms)

    def _note_late(self, ms: int) -> None:
        if len(self.lateness) < LATENESS_RING:
            self.lateness.append(ms)
        else:
            self.lateness[self._late_i] = ms
            self._late_i = (self._late_i + 1) % LATENESS_RING

    def lateness_p(self, q: float) -> int:
        if not self.lateness:
            return 0
        s = sorted(self.lateness)
        return s[min(len(s) - 1, int(q * len(s)))]

    def quiesce(self) -> None:
        for d in self.devices:
            d.quiesced = True

    def stop(self) -> None:
        for d in self.devices:
            app = d.app
            if app is not None and getattr(app, "idle_reason", None) is None:
                try:
                    app.mqtt.disconnect()
                except OSError:
                    pass
                t = app.mqtt.transport
                if t is not None:
                    t.close()
        self.sel.close()

    def stats(self) -> dict[str, int]:
        online = sum(1 for d in self.devices if d.app is not None
                     and getattr(d.app, "idle_reason", None) is None and d.app.mqtt.connected)
        depth = sum(d.app.outbox.depth for d in self.devices if d.app is not None
                    and getattr(d.app, "idle_reason", None) is None)
        return {"devices": len(self.devices), "online": online,
                "records": sum(d.records for d in self.devices), "outbox": depth,
                "errors": sum(d.errors for d in self.devices), "polls": self.polls,
                "link_drops": sum(d.link.drops for d in self.devices)}


def write_keys_file(path: Path, specs: list[DeviceSpec]) -> None:
    """The checker's keys file: device id -> {key id: hex key}."""
    path.write_text(json.dumps({"devices": {s.device_id: {"keys": {"0": s.key.hex()},
                                                          "revoked": False} for s in specs}}))
