"""Gateway benchmark (issue 4): end-to-end records/s and latency, beside a mosquitto bridge.

    .venv/bin/python bench/bench_gateway.py [--records 60000] [--procs 3] [--profile]

All in one run, on real brokers:

1. generator ceiling: pre-encoded, signed QoS 1 PUBLISH packets written on
   raw sockets by ``--procs`` processes into a broker with no subscriber;
   rate = PUBACKs per second. The load generator must beat what it feeds.
2. gateway: the same generator into the local mosquitto; one
   ``python -m gateway run`` process verifies, group-commits (SQLite WAL),
   acknowledges, forwards batches upstream (QoS 1) to a second mosquitto;
   a consumer process counts records arriving upstream. Rate = records
   upstream / time from the first publish to the last record upstream.
3. mosquitto bridge with persistence (the zero-code alternative: verifies
   nothing), same load, same consumer role.
4. latency at 1,000 records/s for the gateway and the bridge: paced
   publisher, p50/p99 from publish to arrival upstream.
5. ``--profile``: the gateway under cProfile (every thread), top functions.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pstats
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from gateway.registry import Registry  # noqa: E402
from gateway.testing import Device, write_config  # noqa: E402
from simulators.mosquitto import Mosquitto  # noqa: E402

DEVICES_PER_PROC = 200
WINDOW = 4000                 # unacknowledged PUBLISH per generator connection


# ---- raw MQTT 3.1.1 packets ----

def _len(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def connect_packet(client_id: str) -> bytes:
    rem = b"\x00\x04MQTT\x04\x02\x00\x3c" + _str(client_id)
    return b"\x10" + _len(len(rem)) + rem


def publish_packet(topic: str, payload: bytes, pid: int) -> bytes:
    rem = _str(topic) + struct.pack(">H", pid) + payload
    return b"\x32" + _len(len(rem)) + rem


def device_keys(proc: int) -> list[tuple[str, bytes]]:
    return [("b%02dd%04d" % (proc, i), bytes([proc, i % 256, i // 256]) * 10 + b"kk")
            for i in range(DEVICES_PER_PROC)]


def make_messages(proc: int, n: int, epoch: int) -> list[tuple[str, bytes]]:
    devs = [Device(did, key=key, epoch=epoch) for did, key in device_keys(proc)]
    out = []
    for i in range(n):
        d = devs[i % len(devs)]
        out.append(d.alarm() if i % 500 == 499 else d.heartbeat() if i % 20 == 19 else d.gps())
    return out


def generator(proc: int, port: int, n: int, epoch: int, rate: float, start_at: float,
              out: Any) -> None:
    """Publish ``n`` pre-encoded messages (QoS 1) on a raw socket; report timings."""
    msgs = make_messages(proc, n, epoch)
    packets = [publish_packet(t, p, (k % 65535) + 1) for k, (t, p) in enumerate(msgs)]
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(connect_packet("gen-%d-%d" % (proc, epoch)))
    if s.recv(4)[:1] != b"\x20":
        raise RuntimeError("no CONNACK")
    acked = [0]
    done = threading.Event()

    def reader() -> None:
        buf = b""
        while acked[0] < n:
            data = s.recv(65536)
            if not data:
                break
            buf += data
            k = len(buf) // 4               # PUBACK: 40 02 pid pid
            acked[0] += k
            buf = buf[k * 4:]
        done.set()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.time()
    sent_at: list[float] = []
    i = 0
    chunk = 1 if rate else 200
    while i < n:
        if rate:
            target = t0 + i / rate
            delay = target - time.time()
            if delay > 0:
                time.sleep(delay)
        while i - acked[0] > WINDOW:
            time.sleep(0.0005)
        now = time.time()
        s.sendall(b"".join(packets[i:i + chunk]))
        if rate:
            sent_at.append(now)
        i += chunk
    done.wait(120)
    t1 = time.time()
    s.close()
    ids = []
    if rate:
        for (t, p), at in zip(msgs, sent_at, strict=True):
            ids.append(("%s:%d:%d" % (t.split("/")[2], *struct.unpack_from(">II", p, 2)), at))
    out.put({"proc": proc, "n": n, "acked": acked[0], "t0": t0, "t1": t1, "sent": ids})


def consumer(port: int, topic: str, gateway_format: bool, expect: int, out: Any,
             ready: Any, timeout: float) -> None:
    """Count records arriving upstream; report first/last arrival and per-id times."""
    got = [0]
    first = [0.0]
    last = [0.0]
    arrivals: dict[str, float] = {}
    finished = threading.Event()

    def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        if gateway_format:
            recs = json.loads(msg.payload)["records"]
            for r in recs:
                if r["kind"] != "liveness":
                    got[0] += 1
                    arrivals[r["id"]] = now
        else:
            got[0] += 1
            arrivals["%s:%d:%d" % (msg.topic.split("/")[2],
                                   *struct.unpack_from(">II", msg.payload, 2))] = now
        if not first[0]:
            first[0] = now
        last[0] = now
        if got[0] >= expect:
            finished.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-consumer")
    c.on_message = on_message
    c.on_subscribe = lambda *a: ready.set()
    c.connect("127.0.0.1", port, 60)
    c.subscribe(topic, qos=1)
    c.loop_start()
    finished.wait(timeout)
    c.loop_stop()
    out.put({"got": got[0], "first": first[0], "last": last[0], "arrivals": arrivals})


def run_load(port: int, procs: int, n: int, epoch: int, rate: float = 0.0,
             consume: tuple[int, str, bool] | None = None, timeout: float = 300
             ) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    q: Any = ctx.Queue()
    cq: Any = ctx.Queue()
    ready = ctx.Event()
    cons = None
    if consume:
        cons = ctx.Process(target=consumer, args=(*consume, n * procs, cq, ready, timeout))
        cons.start()
        ready.wait(10)
    start_at = time.time() + 0.5 + 0.00003 * n        # after every generator pre-encoded
    gens = [ctx.Process(target=generator, args=(p, port, n, epoch, rate / procs, start_at, q))
            for p in range(procs)]
    for g in gens:
        g.start()
    res = [q.get(timeout=timeout) for _ in gens]
    for g in gens:
        g.join()
    t0 = min(r["t0"] for r in res)
    out: dict[str, Any] = {"published": sum(r["acked"] for r in res), "t0": t0,
                           "gen_rate": sum(r["acked"] for r in res) / (
                               max(r["t1"] for r in res) - t0)}
    if cons is not None:
        c = cq.get(timeout=timeout + 30)
        cons.join()
        out.update(got=c["got"], rate=c["got"] / max(c["last"] - t0, 1e-9))
        if rate:
            sent = dict(x for r in res for x in r["sent"])
            lat = sorted((c["arrivals"][k] - t) * 1000 for k, t in sent.items()
                         if k in c["arrivals"])
            out.update(p50_ms=statistics.median(lat), p99_ms=lat[int(len(lat) * 0.99) - 1],
                       lost=len(sent) - len(lat))
    return out


def register(reg_path: Path, procs: int) -> None:
    Registry(reg_path).add_many([(did, "recorder", key, 0) for p in range(procs)
                                 for did, key in device_keys(p)])


PROFILE_WRAPPER = """
import cProfile, sys, threading
profiles = []
_run = threading.Thread.run
def run(self):
    p = cProfile.Profile(); profiles.append(p); p.enable()
    try: _run(self)
    finally: p.disable()
threading.Thread.run = run
main = cProfile.Profile(); profiles.append(main); main.enable()
from gateway.cli import main as cli
try: cli(["run", "--config", sys.argv[1]])
finally:
    main.disable()
    import pstats
    st = pstats.Stats(profiles[0])
    for p in profiles[1:]:
        try: st.add(p)
        except TypeError: pass
    st.dump_stats(sys.argv[2])
"""


def gateway_run(work: Path, args: argparse.Namespace, profile: bool) -> dict[str, Any]:
    local = Mosquitto(work / "local", name="local").start()
    up = Mosquitto(work / "up", name="up").start()
    try:
        cfg = write_config(work / "gw.toml", local.port, up.port, gateway_id="gw-bench",
                           gateway={"log_level": "info"},
                           upstream={"batch_max_records": 1000, "max_inflight": 8})
        register(work / "state" / "registry.json", args.procs)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, "-m", "gateway", "run", "--config", str(cfg)]
        if profile:
            cmd = [sys.executable, "-c", PROFILE_WRAPPER, str(cfg), str(work / "gw.prof")]
        gw = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stderr=open(work / "gw.log", "wb"))
        deadline = time.time() + 30
        while b'"msg": "subscribed"' not in (work / "gw.log").read_bytes():
            if time.time() > deadline or gw.poll() is not None:
                gw.kill()
                raise RuntimeError("gateway did not start: %s" % (work / "gw.log").read_text())
            time.sleep(0.05)
        load = run_load(local.port, args.procs, args.records // args.procs, 1,
                        consume=(up.port, "ft/up/v1/#", True))
        lat = None
        if not profile:
            lat = run_load(local.port, 1, args.latency_records, 2, rate=1000.0,
                           consume=(up.port, "ft/up/v1/#", True))
        gw.terminate()
        try:
            gw.wait(60)
        except subprocess.TimeoutExpired:
            gw.kill()
        out = {"load": load, "latency": lat}
        if profile:
            out["profile"] = work / "gw.prof"
        return out
    finally:
        local.stop()
        up.stop()


def bridge_run(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    up = Mosquitto(work / "bup", name="bup").start()
    bridge = ("connection up\naddress 127.0.0.1:%d\ntopic ft/v1/# out 1\n"
              "cleansession false\nbridge_protocol_version mqttv311\n"
              "try_private false\n" % up.port)
    local = Mosquitto(work / "blocal", name="blocal", persistence=True, extra=bridge).start()
    try:
        time.sleep(1.0)                                  # let the bridge connect
        load = run_load(local.port, args.procs, args.records // args.procs, 1,
                        consume=(up.port, "ft/v1/#", False))
        lat = run_load(local.port, 1, args.latency_records, 2, rate=1000.0,
                       consume=(up.port, "ft/v1/#", False))
        return {"load": load, "latency": lat}
    finally:
        local.stop()
        up.stop()


def ceiling_run(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    b = Mosquitto(work / "ceiling", name="ceiling").start()
    try:
        return run_load(b.port, args.procs, args.records // args.procs, 1)
    finally:
        b.stop()


def stage_costs(work: Path, n: int = 20000) -> dict[str, float]:
    """Per-record CPU cost of each gateway stage, uncontended, in microseconds."""
    from gateway.config import DEFAULT_LANES, Limits
    from gateway.pipeline import Accepted, batch_payload, decide, protocol_limits
    from gateway.store import CommitBatch, Reader, Store
    from protocol.verify import DeviceKeys, verify

    msgs = make_messages(0, n, 1)
    keys = {did: DeviceKeys({0: key}) for did, key in device_keys(0)}
    lim = Limits()
    plim = protocol_limits(lim)
    now = time.time()
    out = {}
    t = time.perf_counter()
    for tp, p in msgs:
        verify(tp, p, keys.get, lambda d, ln: None, int(now), plim)
    out["protocol verify (decode, HMAC, window, time)"] = time.perf_counter() - t
    win: dict[tuple[str, int], Any] = {}
    acc: list[Accepted] = []
    t = time.perf_counter()
    for tp, p in msgs:
        d = decide(tp, p, keys.get, lambda dv, ln: win.get((dv, ln)), now, lim, plim, "gw")
        assert isinstance(d, Accepted)
        win[(d.device, d.replay_lane)] = d.window
        acc.append(d)
    out["gateway decide (verify + upstream record JSON)"] = time.perf_counter() - t
    st = Store(work / "stage.db", DEFAULT_LANES, "gw")
    t = time.perf_counter()
    for i in range(0, n, 1000):
        part = acc[i:i + 1000]
        st.commit(CommitBatch(records=[(a.lane, now, a.record) for a in part],
                              windows={(a.device, a.replay_lane): a.window for a in part},
                              counts={"accepted": len(part)}), now)
    out["group commit (SQLite WAL, 1000 per transaction)"] = time.perf_counter() - t
    r = Reader(work / "stage.db")
    t = time.perf_counter()
    acked: list[tuple[int, int, int]] = []
    for lane in range(3):
        cur = 0
        while True:
            got = r.fetch(lane, cur, 1000)
            if not got:
                break
            cur = got[-1][0]
            batch_payload("gw", [g[2] for g in got])
            acked.extend((rid, lane, size) for rid, size, _ in got)
    out["forward read + batch payload"] = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, len(acked), 1000):
        st.commit(CommitBatch(acked=acked[i:i + 1000]), now)
    out["delete after upstream PUBACK"] = time.perf_counter() - t
    st.close()
    r.close()
    return {k: v / n * 1e6 for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=60000)
    ap.add_argument("--procs", type=int, default=3)
    ap.add_argument("--latency-records", type=int, default=5000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--skip-bridge", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    try:
        ceil = ceiling_run(work, args)
        print("generator ceiling: %d msgs in %.2f s wall, %.0f msgs/s (%d processes)" % (
            ceil["published"], ceil["published"] / ceil["gen_rate"], ceil["gen_rate"],
            args.procs))
        g = gateway_run(work / "g", args, profile=False)
        gl, glat = g["load"], g["latency"]
        print("gateway: %d/%d records upstream, %.0f records/s end to end "
              "(generator fed %.0f msgs/s)" % (gl["got"], gl["published"], gl["rate"],
                                               gl["gen_rate"]))
        print("gateway latency at 1000/s: p50 %.1f ms, p99 %.1f ms, missing %d" % (
            glat["p50_ms"], glat["p99_ms"], glat["lost"]))
        if not args.skip_bridge:
            b = bridge_run(work / "b", args)
            bl, blat = b["load"], b["latency"]
            print("mosquitto bridge (persistence): %d/%d messages upstream, %.0f msgs/s "
                  "(generator fed %.0f msgs/s)" % (bl["got"], bl["published"], bl["rate"],
                                                   bl["gen_rate"]))
            print("bridge latency at 1000/s: p50 %.1f ms, p99 %.1f ms, missing %d" % (
                blat["p50_ms"], blat["p99_ms"], blat["lost"]))
            print("gateway / bridge: %.2f" % (gl["rate"] / bl["rate"]))
        print("per-record cost by stage, uncontended, one core:")
        for k, v in stage_costs(work).items():
            print("  %-50s %6.1f us" % (k, v))
        if args.profile:
            p = gateway_run(work / "p", args, profile=True)
            print("profiled run: %.0f records/s (cProfile slows it)" % p["load"]["rate"])
            st = pstats.Stats(str(p["profile"]))
            st.sort_stats("tottime").print_stats(25)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
