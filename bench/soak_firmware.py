"""Soak: a recorder and a wristband as real MicroPython processes for many
minutes of link flaps, broker restarts, commands and alarms; does the heap
stay flat, and does every record arrive?

    .venv/bin/python bench/soak_firmware.py [--minutes 10] [--heap 192k]

Both devices run the ``.mpy`` build (``make firmware BOARD=unix``) under
``-X heapsize=<heap>``, fed one GNSS epoch per second from a moving track,
against a real mosquitto with persistence and a persistent subscriber.
Every minute: the link drops for 5 s, a signed command arrives (``locate_now``
or ``set_params``, alternately), the alarm input goes on or off; every third
minute the broker restarts. Every 30 s each device reports its heap after a
collection (``stats`` on its control channel).

Prints the heap samples and their least-squares slope over the second half
of the run: bounded caches (the 8 recent commands kept for re-acks, the
acks awaiting PUBACK) fill during the first minutes, a leak keeps climbing
after that. Then the records each device traced against those that arrived
signed and verified (lost must be 0), and the acks for the commands sent.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.devtools import ROOT, Collector, Track, UnixDevice, provision  # noqa: E402
from protocol.auth import Signer  # noqa: E402
from protocol.message import encode  # noqa: E402
from protocol.topics import KIND_ACK, KIND_CMD  # noqa: E402
from simulators.mosquitto import Mosquitto  # noqa: E402
from tests.test_firmware_micropython import check_stream, traced  # noqa: E402

PARAMS = {"min_period_s": 1, "gps_period_s": 1, "hb_interval_s": 30}
RECONNECT = {"backoff_min_ms": 200, "backoff_max_s": 2, "keepalive_s": 10}
ALARM_INPUT = {"recorder": ("sos 1", "sos 0"), "wristband": ("strap open", "strap closed")}


def slope_per_hour(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes) in bytes per hour."""
    n = len(samples)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    den = sum((t - mx) ** 2 for t, _ in samples)
    return 0.0 if den == 0 else 3600 * sum((t - mx) * (v - my) for t, v in samples) / den


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="at least 1")
    ap.add_argument("--heap", default="192k")
    args = ap.parse_args()
    if args.minutes < 1:
        ap.error("--minutes must be at least 1 (one heap sample every 30 s)")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "firmware.build", "--board", "unix", "--out",
                        str(work / "fw")], check=True, capture_output=True, cwd=str(ROOT))
        broker = Mosquitto(work / "broker", persistence=True).start()
        col = Collector(broker.port, "ft/v1/#", persistent=True)
        devs, keys, tracks, heap = {}, {}, {}, {}
        try:
            for kind in ("recorder", "wristband"):
                did = "soak-" + kind[:3]
                keys[did] = provision(work / did, did, kind, port=broker.port, params=PARAMS,
                                      broker_extra=RECONNECT)
                devs[did] = UnixDevice(work / did, heap=args.heap, build_dir=work / "fw" / "unix",
                                       extra_args=("--trace",))
                tracks[did] = Track()
                heap[did] = []
            for dev in devs.values():
                dev.wait_line("I connected", 20)
            start = time.monotonic()
            end = start + args.minutes * 60
            tick = 0
            cmd_seq = 0
            restarts = 0
            while time.monotonic() < end:
                second = tick % 60
                for did, dev in devs.items():
                    tracks[did].step(1.0)
                    dev.feed(tracks[did].sentences(time.time()))
                    kind = "recorder" if did.endswith("rec") else "wristband"
                    if second == 10:
                        dev.control("link down")
                    elif second == 15:
                        dev.control("link up")
                    elif second == 35:
                        dev.control(ALARM_INPUT[kind][(tick // 60) % 2])
                    if tick % 30 == 29:
                        if dev.proc.poll() is not None:
                            raise SystemExit("%s died:\n%s" % (did, "\n".join(dev.lines[-30:])))
                        start_line = len(dev.lines)
                        dev.control("stats")
                        line = dev.wait_line("I stats", 10, start=start_line)
                        used = int(re.search(r"heap_used (\d+)", line).group(1))
                        heap[did].append((time.monotonic() - start, used))
                if second == 25:
                    cmd_seq += 1
                    # the same two commands in turn: the workload stays the same all run
                    body = ({"action": "locate_now", "params": {}} if cmd_seq % 2 else
                            {"action": "set_params", "params": {"hb_interval_s": 30}})
                    for did in devs:
                        col.publish("ft/v1/%s/cmd" % did,
                                    encode(Signer(did, keys[did], 0), KIND_CMD, 7, cmd_seq,
                                           int(time.time()), body))
                if tick % 180 == 45:
                    broker.restart()
                    restarts += 1
                tick += 1
                time.sleep(max(0.0, start + tick - time.monotonic()))
            for did, dev in devs.items():
                if dev.proc.poll() is not None:
                    raise SystemExit("%s died:\n%s" % (did, "\n".join(dev.lines[-30:])))
                dev.control("link up")              # the run may end inside a flap
            made = {did: set(traced(dev.lines, kinds=(1, 2, 3))) for did, dev in devs.items()}

            def arrived(m):
                # cheap: (epoch, seq) from the header; every message is verified below
                got = {(t.split("/")[2], p[2:6], p[6:10]) for t, p in m if len(p) >= 10}
                return all((d, e.to_bytes(4, "big"), q.to_bytes(4, "big")) in got
                           for d in devs for e, q in made[d])
            try:
                col.wait(arrived, 60)
            except TimeoutError:
                pass                                # counted as lost below
            outputs = {did: "\n".join(dev.lines) for did, dev in devs.items()}
        finally:
            for dev in devs.values():
                dev.stop()
            col.close()
            broker.stop()
    print("soak: %.1f min, heap %s, %d broker restarts, %d link flaps, %d commands per device"
          % (args.minutes, args.heap, restarts, int(args.minutes), cmd_seq))
    for did in devs:
        seen = check_stream(col.messages, did, keys[did])
        lost = made[did] - set(seen)
        samples = heap[did]
        half = args.minutes * 30
        steady = [s for s in samples if s[0] >= half]
        values = [v for _, v in samples]
        print("%s: heap after gc, KiB, every 30 s: %s" % (
            did, " ".join("%.1f" % (v / 1024) for v in values)))
        slope = ("%+.0f B/hour" % slope_per_hour(steady) if len(steady) >= 2
                 else "n/a (run at least 2 minutes)")
        print("  min %.1f KiB, max %.1f KiB; slope, whole run %+.0f B/hour, second half %s"
              % (min(values) / 1024, max(values) / 1024, slope_per_hour(samples), slope))
        acks = sum(1 for payload in seen.values() if payload[0] & 0x0F == KIND_ACK)
        print("  records traced %d, arrived verified %d (all kinds), lost %d; acks %d for %d"
              " commands; MemoryError in output: %s"
              % (len(made[did]), len(seen), len(lost), acks, cmd_seq,
                 "yes" if "MemoryError" in outputs[did] else "no"))


if __name__ == "__main__":
    main()
