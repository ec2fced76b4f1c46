"""Fleet benchmark (issue 5): devices per core and memory per device.

    .venv/bin/python bench/bench_fleet.py --devices 3000 --duration 60

Runs N in-process devices (the firmware's app code over simulated boards,
70 % recorders, 30 % wristbands) against a real site — mutual-TLS local
mosquitto with ACLs, the gateway process, an upstream mosquitto — and the
checker, on this machine. Prints:

* the fleet process's CPU per wall second and the devices one core carries;
* resident memory per device (RSS growth over the boot of the fleet / N);
* scheduling lateness p50/p99/max (how late the 1 Hz steps ran: real time
  is kept while this stays well under a second);
* CPU of the gateway and of the local mosquitto over the same interval;
* the checker's verdict (lost, attacks, latency).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulators.checker import Checker, CheckerConfig, ProducedLog, load_keys  # noqa: E402
from simulators.fleet import (  # noqa: E402
    Fleet, SimDevice, fleet_specs, provision_flash, write_keys_file,
)
from simulators.scenario import DEMO_PARAMS  # noqa: E402
from simulators.site import Site, SiteConfig  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_cpu_s(pid: int) -> float:
    try:
        f = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=3000)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--no-tls", action="store_true")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = args.devices
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ft-bench-fleet-"))
    specs = fleet_specs(round(n * 0.7), n - round(n * 0.7))
    t = time.monotonic()
    site = Site(SiteConfig(work / "site", tls=not args.no_tls),
                specs)
    site.setup()
    setup_s = time.monotonic() - t
    site.start()
    site.wait_gateway_ready()
    write_keys_file(work / "keys.json", specs)
    produced = ProducedLog(work / "produced.jsonl", keep=True)
    checker = Checker(CheckerConfig(port=site.upstream.port), produced, None,
                      load_keys(work / "keys.json")).start()
    rss0 = rss_kib()
    sims = []
    for s in specs:
        flash = work / "flash" / s.device_id
        provision_flash(s, flash, "127.0.0.1", site.local_port, dict(DEMO_PARAMS),
                        site.device_tls_files(s.device_id), "pem")
        sims.append(SimDevice(s.device_id, s.kind, flash, s.seed, produced))
    fleet = Fleet(sims)
    t = time.monotonic()
    fleet.start()
    fleet.run_for(10.0)            # boot: connect (TLS handshakes) and first fixes
    boot_s = time.monotonic() - t
    rss1 = rss_kib()
    assert site.gateway_proc is not None and site.local is not None \
        and site.local.proc is not None
    gw0 = proc_cpu_s(site.gateway_proc.pid)
    mq0 = proc_cpu_s(site.local.proc.pid)
    cpu0 = time.process_time()
    w0 = time.monotonic()
    rec0 = fleet.stats()["records"]
    fleet.lateness.clear()
    fleet.run_for(args.duration)
    wall = time.monotonic() - w0
    cpu = time.process_time() - cpu0
    gw = proc_cpu_s(site.gateway_proc.pid) - gw0
    mq = proc_cpu_s(site.local.proc.pid) - mq0
    st = fleet.stats()
    late = (fleet.lateness_p(0.5), fleet.lateness_p(0.99), max(fleet.lateness or [0]))
    fleet.quiesce()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and fleet.stats()["outbox"]:
        fleet.run_for(0.5)
    fleet.run_for(2.0)
    checker.wait_idle(2.0, 60.0)
    report = checker.report()
    checker.stop()
    fleet.stop()
    site.stop()

    print("fleet: %d devices (%d recorders, %d wristbands), TLS %s, %.0f s measured"
          % (n, round(n * 0.7), n - round(n * 0.7), "off" if args.no_tls else "on", wall))
    print("setup (PKI, registry, configs)     %8.1f s" % setup_s)
    print("boot (connect + first fixes)       %8.1f s, %d of %d online" % (
        boot_s, st["online"], n))
    print("fleet process CPU                  %8.2f core (%.0f devices per core)" % (
        cpu / wall, n / max(cpu / wall, 1e-9)))
    print("memory per device (RSS growth)     %8.1f KiB" % ((rss1 - rss0) / n))
    print("scheduling lateness p50/p99/max    %5d / %d / %d ms" % late)
    print("records signed                     %8d (%.0f/s)" % (
        st["records"] - rec0, (st["records"] - rec0) / wall))
    print("gateway CPU                        %8.2f core" % (gw / wall))
    print("local mosquitto CPU                %8.2f core" % (mq / wall))
    print("checker: produced %d, forwarded %d, lost %d, duplicated %d, attacks forwarded %d"
          % (report.produced, report.forwarded, report.lost, report.duplicated,
             report.attacks_forwarded))
    lat = report.record_latency
    def ms(v: float | None) -> str:
        return "-" if v is None else "%.0f" % (v * 1000 if v < 100 else v)
    print("record latency p50/p99             %s / %s ms" % (ms(lat.p50), ms(lat.p99)))


if __name__ == "__main__":
    main()
