"""TLS benchmark (issue 6): what mutual TLS costs, against plaintext, in one run.

    .venv/bin/python bench/bench_tls.py

* MicroPython device (the firmware's MqttClient and TcpLink on the unix
  port): connection setup (TCP + TLS handshake with client certificate +
  CONNECT/CONNACK) and QoS 1 records per second (8 in flight).
* Gateway: connection setup of its paho client, and end-to-end records per
  second through the real gateway process (verify, commit, forward,
  upstream PUBACK) fed by 3 device identities publishing pre-signed records,
  with the local broker's mutual-TLS listener against a plaintext one.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from protocol import message  # noqa: E402
from protocol.auth import Signer  # noqa: E402
from protocol.topics import KIND_GPS, topic_for  # noqa: E402
from simulators.checker import Checker, CheckerConfig  # noqa: E402
from simulators.fleet import fleet_specs  # noqa: E402
from simulators.site import Site, SiteConfig  # noqa: E402

FIX = {"lat_e7": 359912345, "lon_e7": 1194012345, "alt_m": 38, "speed_cms": 142,
       "course_cdeg": 27350, "hdop_x10": 8, "fix": 2, "sats": 14, "gnss": 9, "age_s": 0}
PER_PUBLISHER = 6000


def micropython() -> str:
    cand = Path(sys.executable).parent / "micropython"
    return str(cand) if cand.exists() else "micropython"


def paho_client(cid: str, tls: dict[str, str] | None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
    if tls:
        c.tls_set(ca_certs=tls["ca"], certfile=tls["cert"], keyfile=tls["key"])
    c.max_inflight_messages_set(200)
    return c


def connect_ms(port: int, cid: str, tls: dict[str, str] | None, n: int = 20) -> float:
    times = []
    for _ in range(n):
        c = paho_client(cid, tls)
        t = time.perf_counter()
        c.connect("127.0.0.1", port, 30)
        while not c.is_connected():
            c.loop(0.01)
        times.append((time.perf_counter() - t) * 1000)
        c.disconnect()
    return statistics.median(times)


def publisher(port: int, did: str, key: bytes, tls: dict[str, str] | None, n: int,
              epoch: int) -> None:
    s = Signer(did, key, 0)
    payloads = [message.encode(s, KIND_GPS, epoch, i, int(time.time()), FIX) for i in range(n)]
    c = paho_client(did, tls)
    c.connect("127.0.0.1", port, 60)
    c.loop_start()
    infos = [c.publish(topic_for(did, KIND_GPS), p, qos=1) for p in payloads]
    for i in infos:
        i.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()


def device_run(flash: Path, port: int, tls: bool) -> dict:
    env = dict(os.environ, MICROPYPATH=str(ROOT) + ":.frozen")
    args = [micropython(), str(ROOT / "bench" / "tls_device_loop.py"), str(flash), "127.0.0.1",
            str(port), "2000"] + (["tls"] if tls else [])
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run_site(work: Path, tls: bool, epoch: int) -> dict:
    specs = fleet_specs(3, 0)
    site = Site(SiteConfig(work, tls=tls), specs)
    site.setup()
    site.start()
    site.wait_gateway_ready()
    out: dict = {}
    try:
        files = None
        flash = work / "flash"
        flash.mkdir()
        if tls:
            files = {s.device_id: {
                "ca": str(site.pki.ca_cert_path), "cert": str(site.pki.cert_path(s.device_id)),
                "key": str(site.pki.key_path(s.device_id))} for s in specs}
            for name, data in site.pki.device_files("rec-0001").items():
                (flash / name).write_bytes(data)
        gw_tls = None
        if tls:
            gw_tls = {"ca": str(site.pki.ca_cert_path), "cert": str(site.pki.cert_path(
                site.cli_id)), "key": str(site.pki.key_path(site.cli_id))}
        out["gateway_connect_ms"] = connect_ms(site.local_port, site.cli_id, gw_tls)
        dev = device_run(flash, site.local_port, tls)
        out["device_connect_ms"] = dev["connect_ms"]
        out["device_rate"] = dev["rate"]
        out["device_session_heap"] = dev["session_heap"] / 1024
        checker = Checker(CheckerConfig(port=site.upstream.port, client_id="bench-tls")).start()
        checker.wait_idle(2.0, 30.0, min_messages=0)     # the device run's records
        base = len(checker.arrived_ids())
        total = PER_PUBLISHER * len(specs)
        t0 = time.monotonic()
        procs = [mp.Process(target=publisher, args=(
            site.local_port, s.device_id, s.key, files[s.device_id] if files else None,
            PER_PUBLISHER, epoch)) for s in specs]
        for p in procs:
            p.start()
        deadline = time.monotonic() + 300
        while len(checker.arrived_ids()) - base < total and time.monotonic() < deadline:
            time.sleep(0.05)
        out["gateway_rate"] = (len(checker.arrived_ids()) - base) / (time.monotonic() - t0)
        for p in procs:
            p.join(60)
        checker.stop()
    finally:
        site.stop()
    return out


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ft-bench-tls-"))
    plain = run_site(work / "plain", False, 1)
    tls = run_site(work / "tls", True, 2)
    print("%-52s %12s %12s" % ("", "plaintext", "mutual TLS"))
    rows = [("MicroPython device: connect (TCP+TLS+CONNACK)", "device_connect_ms", "%.0f ms"),
            ("MicroPython device: QoS 1 records/s, 8 in flight", "device_rate", "%.0f /s"),
            ("MicroPython device: heap held by the open connection", "device_session_heap",
             "%.1f KiB"),
            ("gateway paho client: connect", "gateway_connect_ms", "%.1f ms"),
            ("gateway end to end, 3 publishers: records/s", "gateway_rate", "%.0f /s")]
    for label, key, fmt in rows:
        print("%-52s %12s %12s" % (label, fmt % plain[key], fmt % tls[key]))


if __name__ == "__main__":
    main()
