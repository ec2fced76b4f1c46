"""A whole edge site on this machine: what `make demo` and the end-to-end
scenarios stand on.

* the site PKI (gateway/pki.py): CA, broker certificate, one certificate per
  device and for the gateway;
* the local mosquitto with mutual TLS, CRL and per-device ACL
  (gateway/brokerconf.py) — security is on by default;
* an upstream mosquitto standing in for the central platform's broker;
* the device registry (TinyDB) with every device's HMAC key;
* the gateway itself as a real process (``python -m gateway run``), which
  the fault schedule may SIGKILL and restart.

Everything lives in one work directory and listens on free loopback ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gateway import brokerconf
from gateway.pki import Pki
from gateway.registry import Registry
from simulators.fleet import DeviceSpec
from simulators.mosquitto import Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SiteConfig:
    workdir: Path
    gateway_id: str = "gw-zhucheng-01"
    tls: bool = True
    gateway_log_level: str = "info"
    key_grace_s: float = 600.0


class Site:
    def __init__(self, cfg: SiteConfig, specs: list[DeviceSpec]) -> None:
        self.cfg = cfg
        self.specs = specs
        self.dir = Path(cfg.workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki = Pki(self.dir / "pki")
        self.local_port = free_port()
        self.local: Mosquitto | None = None
        # persistent, as a platform broker is: subscribers keep their sessions over a restart
        self.upstream = Mosquitto(self.dir / "upstream", name="upstream", persistence=True)
        # with security on, the gateway reaches the platform over TLS (verifying its
        # certificate); the checker, standing in for the platform itself, reads on
        # the broker's loopback plaintext listener
        self.upstream_tls_port = free_port() if cfg.tls else 0
        self.gateway_proc: subprocess.Popen[bytes] | None = None
        self.gateway_config = self.dir / "gateway.toml"
        self.gateway_log = self.dir / "gateway.log"
        self.cli_id = cfg.gateway_id + "-cli"
        self.gateway_restarts = 0

    # ---- setup ----
    def setup(self) -> None:
        if self.cfg.tls:
            self.pki.init(site="fieldtrace demo site",
                          gateway_ids=(self.cfg.gateway_id, self.cli_id))
            self.pki.issue_many([s.device_id for s in self.specs])
            settings = brokerconf.BrokerSettings(
                pki_dir=self.pki.dir, out_dir=self.dir / "local", tls_port=self.local_port,
                bind="127.0.0.1", gateway_ids=(self.cfg.gateway_id, self.cli_id),
                persistence=True, run_as_root=os.geteuid() == 0)
            brokerconf.write(settings)
            self.local = Mosquitto(self.dir / "local", port=self.local_port, name="local",
                                   config=brokerconf.config_text(settings))
        else:
            self.local = Mosquitto(self.dir / "local", port=self.local_port, name="local",
                                   persistence=True)
        if self.cfg.tls:
            up = self.upstream
            pki = self.pki
            up.extra = "\n".join([
                "listener %d 127.0.0.1" % self.upstream_tls_port,
                "cafile %s" % pki.ca_cert_path,
                "certfile %s" % (pki.dir / "broker.crt"),
                "keyfile %s" % (pki.dir / "broker.key"),
                "tls_version tlsv1.2"])
        registry = Registry(self.dir / "registry.json")
        registry.add_many([(s.device_id, s.kind, s.key, 0) for s in self.specs])
        self.gateway_config.write_text(self.gateway_toml(self.cfg.gateway_id))
        (self.dir / "gateway-cli.toml").write_text(self.gateway_toml(self.cli_id))

    def gateway_toml(self, identity: str) -> str:
        d = self.dir
        lines = [
            "[gateway]",
            'id = "%s"' % self.cfg.gateway_id,
            'store_path = "%s"' % (d / "gateway.db"),
            'registry_path = "%s"' % (d / "registry.json"),
            'log_level = "%s"' % self.cfg.gateway_log_level,
            "",
            "[local]",
            'host = "127.0.0.1"',
            "port = %d" % self.local_port,
            'client_id = "%s"' % identity,
        ]
        if self.cfg.tls:
            lines += [
                "[local.tls]",
                "enabled = true",
                'ca_file = "%s"' % self.pki.ca_cert_path,
                'cert_file = "%s"' % self.pki.cert_path(identity),
                'key_file = "%s"' % self.pki.key_path(identity),
            ]
        lines += [
            "",
            "[upstream]",
            'host = "127.0.0.1"',
            "port = %d" % (self.upstream_tls_port or self.upstream.port),
            'client_id = "%s-up"' % self.cfg.gateway_id,
            "backoff_initial_s = 0.2",
            "backoff_max_s = 2.0",
            "[upstream.tls]",
            "enabled = %s" % ("true" if self.cfg.tls else "false"),
        ]
        if self.cfg.tls:
            lines.append('ca_file = "%s"' % self.pki.ca_cert_path)
        lines += [
            "",
            "[metrics]",
            "port = 0",
            "",
            "[liveness]",
            "debounce_s = 2.0",
        ]
        return "\n".join(lines) + "\n"

    def device_tls_files(self, device_id: str) -> dict[str, bytes] | None:
        return self.pki.device_files(device_id) if self.cfg.tls else None

    # ---- processes ----
    def start(self) -> None:
        assert self.local is not None, "setup() first"
        self.local.start()
        self.upstream.start()
        self.start_gateway()

    def start_gateway(self) -> None:
        log = open(self.gateway_log, "ab")
        self.gateway_proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.gateway_config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        log.close()

    def kill_gateway(self) -> None:
        """SIGKILL: the crash the gateway's durability promises are about."""
        p = self.gateway_proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        self.gateway_proc = None

    def restart_gateway(self) -> None:
        self.kill_gateway()
        self.start_gateway()
        self.gateway_restarts += 1

    def gateway_alive(self) -> bool:
        return self.gateway_proc is not None and self.gateway_proc.poll() is None

    def stop(self) -> None:
        p = self.gateway_proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.gateway_proc = None
        if self.local is not None:
            self.local.stop()
        self.upstream.stop()

    def wait_gateway_ready(self, timeout: float = 20.0) -> None:
        """The gateway logs its local connection; wait for it (or its death)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.gateway_alive():
                raise RuntimeError("gateway exited: %s" % self.gateway_log_tail())
            text = self.gateway_log.read_text(errors="replace") if self.gateway_log.exists() \
                else ""
            if "subscribed" in text or "connected" in text:
                return
            time.sleep(0.05)
        raise RuntimeError("gateway not ready: %s" % self.gateway_log_tail())

    def gateway_log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.gateway_log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
