"""Two independent locks: the registry's HMAC key and the broker certificate.
Revoking either one stops a device, whatever the state of the other."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulators.checker import Checker, CheckerConfig, ProducedLog
from simulators.fleet import Fleet, SimDevice, fleet_specs, provision_flash
from simulators.scenario import DEMO_PARAMS
from simulators.site import Site, SiteConfig

pytestmark = pytest.mark.broker


@pytest.fixture
def running(tmp_path: Path):
    specs = fleet_specs(2, 0)
    site = Site(SiteConfig(tmp_path / "site"), specs)
    site.setup()
    site.start()
    site.wait_gateway_ready()
    produced = ProducedLog(None)
    checker = Checker(CheckerConfig(port=site.upstream.port), produced).start()
    sims = []
    for s in specs:
        flash = tmp_path / "flash" / s.device_id
        provision_flash(s, flash, "127.0.0.1", site.local_port, dict(DEMO_PARAMS, hb_interval_s=10,
                                                                      gps_period_s=5),
                        site.device_tls_files(s.device_id), "pem")
        sims.append(SimDevice(s.device_id, s.kind, flash, s.seed, produced))
    fleet = Fleet(sims)
    fleet.start()
    fleet.run_for(8)
    yield site, fleet, checker
    fleet.stop()
    checker.stop()
    site.stop()


def gateway_cli(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60)


def arrived_after(checker: Checker, device: str, t: float) -> int:
    with checker._lock:
        return sum(1 for r in checker.tally.records if r.device == device and r.arrived_at > t)


def test_revoked_hmac_key_is_refused_while_the_certificate_is_valid(running) -> None:
    site, fleet, checker = running
    p = gateway_cli(site, "devices", "revoke", "rec-0001", "--config", str(site.gateway_config))
    assert p.returncode == 0, p.stderr
    t = time.time() + 2                        # the gateway re-reads the registry file
    fleet.run_for(14)
    assert fleet.by_id["rec-0001"].app.mqtt.connected        # TLS still lets it in
    assert arrived_after(checker, "rec-0001", t) == 0        # the gateway refuses its records
    assert arrived_after(checker, "rec-0002", t) > 0         # the other device flows on
    status = gateway_cli(site, "status", "--json", "--interval", "0", "--config",
                         str(site.gateway_config))
    assert '"device_revoked"' in status.stdout


def test_revoked_certificate_is_refused_while_the_hmac_key_is_valid(running) -> None:
    site, fleet, checker = running
    p = gateway_cli(site, "pki", "--dir", str(site.pki.dir), "revoke", "rec-0002",
                    "--broker-dir", str(site.dir / "local"))
    assert p.returncode == 0, p.stderr
    t = time.time() + 1
    fleet.run_for(3)
    dev = fleet.by_id["rec-0002"]
    dev.control("link down")                   # force a new TLS handshake
    fleet.run_for(2)
    dev.control("link up")
    fleet.run_for(12)
    assert not dev.app.mqtt.connected                        # the CRL refuses the handshake
    assert arrived_after(checker, "rec-0002", t) == 0
    assert arrived_after(checker, "rec-0001", t) > 0
