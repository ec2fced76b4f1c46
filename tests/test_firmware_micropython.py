"""The firmware as real MicroPython (unix port) processes against a real
mosquitto: GNSS through a pseudo-terminal, signed records verified by the
protocol module, broker outage, SIGKILL mid-write, small heap."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from firmware.devtools import (
    ROOT, Collector, Track, UnixDevice, prefill_backlog, provision,
)
from protocol.verify import DeviceKeys, verify
from simulators.mosquitto import Mosquitto

pytestmark = [pytest.mark.micropython, pytest.mark.broker]

FAST = {"min_period_s": 1, "gps_period_s": 1, "hb_interval_s": 30}
QUICK_RECONNECT = {"backoff_min_ms": 100, "backoff_max_s": 1, "keepalive_s": 10}


def feed_for(dev, seconds, track, period=0.5, until=None):
    """Feed one receiver epoch every ``period`` s (fresh timestamps)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        track.step(period)
        dev.feed(track.sentences(time.time()))
        if until is not None and until():
            return
        time.sleep(period)


def check_stream(messages, device_id, key):
    """Verify every message as a gateway would, with one replay window per
    lane. Returns {(epoch, seq): payload} of the distinct records; fails on
    anything but ok or an identical duplicate."""
    keys = {device_id: DeviceKeys({0: key})}
    windows = {}
    seen = {}
    for topic, payload in messages:
        if not topic.startswith("ft/v1/%s/" % device_id) or topic.endswith("/cmd"):
            continue
        v = verify(topic, payload, keys.get, lambda d, lane: windows.get(lane), time.time())
        if v.ok:
            windows[v.lane] = v.window
            key_ = (v.envelope.epoch, v.envelope.seq)
            assert key_ not in seen, "seq reused with another payload: %r" % (key_,)
            seen[key_] = payload
        else:
            assert v.reason == "duplicate", (topic, v)
            env = v.envelope
            assert seen.get((env.epoch, env.seq)) == payload, "duplicate differs"
    return seen


def traced(lines, kinds=(1, 2)):
    """(epoch, seq) of every record the device traced, of the given kinds."""
    out = []
    for ln in lines:
        m = re.match(r"T rec (\d+) (\d+) (\d+)", ln)
        if m and int(m.group(1)) in kinds:
            out.append((int(m.group(2)), int(m.group(3))))
    return out


def telemetry_order(messages, device_id):
    """First-arrival order of gps+hb records."""
    order = []
    got = set()
    for topic, payload in messages:
        if topic in ("ft/v1/%s/gps" % device_id, "ft/v1/%s/hb" % device_id):
            k = (int.from_bytes(payload[2:6], "big"), int.from_bytes(payload[6:10], "big"))
            if k not in got:
                got.add(k)
                order.append(k)
    return order


@pytest.mark.parametrize("kind", ["recorder", "wristband"])
def test_fixes_through_the_pty_arrive_as_verified_records(tmp_path, broker, kind):
    did = "mp-%s-1" % kind[:3]
    key = provision(tmp_path, did, kind, port=broker.port, params=FAST)
    col = Collector(broker.port, "ft/v1/%s/#" % did)
    try:
        with UnixDevice(tmp_path) as dev:
            dev.wait_line("I connected", 15)
            n_gps = lambda: sum(t.endswith("/gps") for t, _ in col.messages)  # noqa: E731
            feed_for(dev, 15, Track(), until=lambda: n_gps() >= 3)
            col.wait(lambda m: n_gps() >= 3, 10)
    finally:
        col.close()
    seen = check_stream(col.messages, did, key)
    topics = {t.rsplit("/", 1)[1] for t, _ in col.messages}
    assert {"gps", "hb", "status"} <= topics
    assert len(seen) >= 5


def test_broker_outage_loses_nothing_and_keeps_order(tmp_path):
    did = "mp-outage-1"
    broker = Mosquitto(tmp_path / "broker", persistence=True, name="outage")
    broker.start()
    try:
        key = provision(tmp_path / "flash", did, port=broker.port, params=FAST,
                        broker_extra=QUICK_RECONNECT)
        col = Collector(broker.port, "ft/v1/%s/#" % did, persistent=True)
        with UnixDevice(tmp_path / "flash", extra_args=("--trace",)) as dev:
            dev.wait_line("I connected", 15)
            track = Track()
            feed_for(dev, 3, track)
            broker.stop()
            mark = len(dev.lines)
            feed_for(dev, 6, track)                      # records pile up
            dev.wait_line("W disconnected", 5, start=mark)
            broker.start()
            feed_for(dev, 2, track)
            made = traced(dev.lines)
            col.wait(lambda m: set(made) <= set(telemetry_order(m, did)), 30)
            dev.control("stats")
        col.close()
    finally:
        broker.stop()
    seen = check_stream(col.messages, did, key)
    order = telemetry_order(col.messages, did)
    assert order == sorted(order), "telemetry out of order"
    assert set(made) <= set(seen)
    assert any(bool(p[1] & 0x10) for t, p in col.messages if t.endswith("/gps")), \
        "no record carries the backlog flag"


def test_sigkill_mid_write_loses_nothing_durable_and_reuses_no_seq(tmp_path, broker):
    did = "mp-kill-1"
    key = provision(tmp_path, did, port=broker.port, params=FAST,
                    broker_extra=QUICK_RECONNECT,
                    outbox={"flush_records": 2, "flush_age_s": 1})
    col = Collector(broker.port, "ft/v1/%s/#" % did)
    track = Track()
    try:
        dev = UnixDevice(tmp_path, extra_args=("--trace",))
        dev.wait_line("I connected", 15)
        feed_for(dev, 2, track)
        dev.control("link down")
        dev.wait_line("W disconnected", 5)
        feed_for(dev, 4, track)
        dev.kill()                                        # power cut, mid-run
        first = list(dev.lines)
        dev.stop()
        flushed = {}
        for ln in first:
            m = re.match(r"T flushed (\w) (\d+) (\d+)", ln)
            if m:
                flushed[m.group(1)] = (int(m.group(2)), int(m.group(3)))
        assert "t" in flushed, "\n".join(first[-20:])
        durable = [r for r in traced(first) if r <= flushed["t"]]
        with UnixDevice(tmp_path, extra_args=("--trace",)) as dev2:
            boot = dev2.wait_line("I boot", 10)
            assert int(re.search(r"outbox (\d+)", boot).group(1)) > 0
            dev2.wait_line("I connected", 15)
            feed_for(dev2, 2, track)
            col.wait(lambda m: set(durable) <= set(telemetry_order(m, did)), 30)
            second = list(dev2.lines)
    finally:
        col.close()
    seen = check_stream(col.messages, did, key)          # no seq reused
    epochs = {e for e, _ in traced(first)}
    assert min(e for e, _ in traced(second)) > max(epochs)
    assert set(durable) <= set(seen)
    order = telemetry_order(col.messages, did)
    assert order == sorted(order)


@pytest.mark.parametrize("kind", ["recorder", "wristband"])
def test_small_heap_connect_backlog_flush_and_long_run(tmp_path, broker, kind, firmware_build):
    did = "mp-heap-%s" % kind[:3]
    key = provision(tmp_path, did, kind, port=broker.port, params=FAST,
                    broker_extra=QUICK_RECONNECT)
    depth = prefill_backlog(tmp_path, 500)
    assert depth >= 500
    col = Collector(broker.port, "ft/v1/%s/#" % did)
    try:
        with UnixDevice(tmp_path, heap=SMALL_HEAP, build_dir=firmware_build) as dev:
            dev.wait_line("I connected", 15)
            col.wait(lambda m: len(telemetry_order(m, did)) >= depth, 60)
            # the long run: fixes, GNSS noise, alarms, link flaps
            track = Track()
            for i in range(6):
                dev.feed(b"\x00\xff$GPGGA,garbage*00\r\n" + bytes(range(256)))
                dev.control(["sos 1", "strap open", "link down", "link up",
                             "battery 10", "recording 1"][i])
                feed_for(dev, 1, track)
            dev.control("stats")
            stats = dev.wait_line("I stats", 10)
            assert dev.proc.poll() is None
            out = "\n".join(dev.lines)
    finally:
        col.close()
    assert "MemoryError" not in out and "out of memory" not in out
    check_stream(col.messages, did, key)
    peak = int(re.search(r"live_peak (\d+)", stats).group(1))
    code = int(re.search(r"code (\d+)", stats).group(1))
    print(stats)
    assert peak - code < 64 * 1024, stats          # the data working set


def test_firmware_runs_from_its_romfs_image(tmp_path, broker, firmware_build):
    """The ROMFS image that `make flash ROMFS=1` deploys holds the whole
    firmware: with only the entry point and the image, the device boots from
    /rom and its records verify."""
    did = "mp-romfs-1"
    key = provision(tmp_path / "flash", did, "recorder", port=broker.port, params=FAST)
    only_image = tmp_path / "image"
    only_image.mkdir()
    (only_image / "main_unix.py").write_bytes((firmware_build / "main_unix.py").read_bytes())
    col = Collector(broker.port, "ft/v1/%s/#" % did)
    try:
        with UnixDevice(tmp_path / "flash", build_dir=only_image,
                        extra_args=("--romfs", str(firmware_build / "firmware.romfs"))) as dev:
            dev.wait_line("I connected", 15)
            track = Track()
            feed_for(dev, 4, track, until=lambda: len(telemetry_order(col.messages, did)) >= 2)
            col.wait(lambda m: len(telemetry_order(m, did)) >= 2, 10)
    finally:
        col.close()
    assert len(check_stream(col.messages, did, key)) >= 2


def test_an_unusable_romfs_image_is_refused_with_the_reason(tmp_path, firmware_build):
    from mpremote.romfs import VfsRomWriter

    bad = tmp_path / "bad.romfs"
    bad.write_bytes(b"not a romfs image")
    cut = tmp_path / "cut.romfs"          # a deploy cut short: no completion mark
    writer = VfsRomWriter()
    writer.opendir("firmware")
    writer.mkfile("__init__.mpy", (firmware_build / "firmware" / "__init__.mpy").read_bytes())
    writer.closedir()
    cut.write_bytes(writer.finalise())
    for args, reason in ((("--romfs", str(bad)), "is not a ROMFS image"),
                         (("--romfs=%s" % (tmp_path / "missing"),), "cannot read"),
                         (("--romfs", str(cut)), "is not a complete fieldtrace image"),
                         (("--romfs",), "needs an image path")):
        res = subprocess.run([str(ROOT / ".venv" / "bin" / "micropython"),
                              str(firmware_build / "main_unix.py"), *args],
                             capture_output=True, timeout=30,
                             env={"MICROPYPATH": str(firmware_build)})
        assert res.returncode == 2 and reason.encode() in res.stdout, (args, res.stdout)


SMALL_HEAP = os.environ.get("FT_SMALL_HEAP", "192k")


@pytest.fixture(scope="module")
def firmware_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("fw")
    subprocess.run([sys.executable, "-m", "firmware.build", "--board", "unix", "--out", str(out)],
                   check=True, capture_output=True, cwd=str(ROOT))
    return out / "unix"


NOALLOC_SCRIPT = """
import gc, micropython
from firmware.app.nmea import NmeaParser

def main(path):
    p = NmeaParser()
    f = open(path, 'rb')
    data = bytearray(f.read())
    f.close()
    p.feed(data)              # warm up: first-time attribute growth
    gc.collect()
    ok = True
    micropython.heap_lock()
    try:
        p.feed(data)
    except MemoryError:
        ok = False
    micropython.heap_unlock()
    print('ALLOC-FREE' if ok else 'ALLOCATES', p.fix_updates, p.skipped, p.garbage)

main(%r)
"""


def test_nmea_parser_allocates_nothing_per_sentence_on_micropython(tmp_path):
    from firmware.devtools import fix_sentences
    from tests.conftest import run_micropython

    data = b"".join(fix_sentences(31.0 + i * 1e-4, 121.0, 1767225600 + i, talker=t)
                    for i in range(50) for t in ("GN", "BD", "GB", "GP"))
    capture = tmp_path / "capture.nmea"
    capture.write_bytes(b"$PUBX,00*33\r\n\x00\xff$GPGGA,1*00\r\n" + data)
    script = tmp_path / "noalloc.py"
    script.write_text(NOALLOC_SCRIPT % str(capture))
    res = run_micropython(script)
    assert b"ALLOC-FREE 800" in res.stdout, res.stdout + res.stderr   # 2 feeds x 400


def test_unix_config_error_gives_safe_idle_on_micropython(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"device_id": "x"}))
    with UnixDevice(tmp_path) as dev:
        line = dev.wait_line("safe idle", 10)
        assert "config_invalid" in line
        time.sleep(0.3)
        assert dev.proc.poll() is None


def test_watchdog_reset_is_reported_in_the_next_heartbeat(tmp_path, broker):
    did = "mp-wdt-1"
    key = provision(tmp_path, did, port=broker.port)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["watchdog_s"] = 2
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with UnixDevice(tmp_path) as dev:
        dev.wait_line("I connected", 15)
        dev.control("hang")                     # the main loop stops feeding
        dev.proc.wait(10)
        assert dev.proc.returncode == 3
    col = Collector(broker.port, "ft/v1/%s/hb" % did)
    try:
        with UnixDevice(tmp_path):
            col.wait(lambda m: m, 15)
    finally:
        col.close()
    seen = check_stream(col.messages, did, key)
    from protocol.codec import decode
    assert decode(list(seen.values())[-1]).body["reset_cause"] == 2      # watchdog


def test_sos_from_the_control_channel_overtakes_the_backlog(tmp_path, broker):
    did = "mp-sos-1"
    key = provision(tmp_path, did, port=broker.port, params=FAST,
                    broker_extra=QUICK_RECONNECT)
    col = Collector(broker.port, "ft/v1/%s/#" % did)
    try:
        with UnixDevice(tmp_path) as dev:
            dev.wait_line("I connected", 15)
            dev.control("link down")
            dev.wait_line("W disconnected", 5)
            track = Track()
            feed_for(dev, 4, track)                      # a backlog of fixes
            dev.control("sos 1")
            dev.wait_line("I alarm sos", 5)
            mark = len(col.messages)
            dev.control("link up")
            col.wait(lambda m: {"alarm", "gps"} <= {t.rsplit("/", 1)[1] for t, _ in m[mark:]},
                     15)
    finally:
        col.close()
    check_stream(col.messages, did, key)
    after = [t.rsplit("/", 1)[1] for t, _ in col.messages[mark:]
             if not t.endswith("/status")]
    assert after[0] == "alarm" and "gps" in after


def test_signed_command_is_executed_and_acked_forged_one_is_not(tmp_path, broker):
    from protocol.auth import Signer
    from protocol.message import encode
    from protocol.topics import KIND_CMD

    did = "mp-cmd-1"
    key = provision(tmp_path, did, port=broker.port)
    col = Collector(broker.port, "ft/v1/%s/#" % did)
    try:
        with UnixDevice(tmp_path) as dev:
            dev.wait_line("I connected", 15)
            forged = encode(Signer(did, bytes(32), 0), KIND_CMD, 9, 1, int(time.time()),
                            {"action": "reboot", "params": {}})
            col.publish("ft/v1/%s/cmd" % did, forged)
            dev.wait_line("W command refused: bad_signature", 10)
            good = encode(Signer(did, key, 0), KIND_CMD, 9, 2, int(time.time()),
                          {"action": "set_params", "params": {"hb_interval_s": 120}})
            col.publish("ft/v1/%s/cmd" % did, good)
            col.wait(lambda m: any(t.endswith("/ack") for t, _ in m), 10)
            col.publish("ft/v1/%s/cmd" % did, good)             # a replay
            dev.wait_line("W command refused: duplicate", 10)
            dev.wait_line("I command 9.2 repeated: acked again", 10)  # not executed again
            col.wait(lambda m: sum(t.endswith("/ack") for t, _ in m) >= 2, 10)
    finally:
        col.close()
    seen = check_stream(col.messages, did, key)
    from protocol.codec import decode
    acks = [decode(p).body for p in seen.values() if p[0] & 0x0F == 6]
    assert acks == [{"cmd_epoch": 9, "cmd_seq": 2, "result": "ok"}] * 2
    assert json.loads((tmp_path / "params.json").read_text())["hb_interval_s"] == 120
