"""One end-to-end run: a site, a fleet, a fault schedule, the checker's verdict.

Used by ``python -m simulators fleet``, ``make demo`` and the end-to-end
tests. The flow:

1. the site (simulators/site.py): PKI, mutual-TLS local broker with ACLs,
   upstream broker, registry, gateway process;
2. the checker subscribes upstream;
3. the fleet runs the firmware's app code for every in-process device, plus
   ``micropython`` devices as real MicroPython processes, for ``duration_s``
   while the fault schedule plays;
4. drain: the fleet keeps running until every device's outbox is empty and
   the gateway has gone quiet upstream;
5. the checker's report, plus the gateway's own rejection counters.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.checker import (
    AttackLog, Checker, CheckerConfig, ProducedLog, Report, load_keys,
)
from simulators.faults import Fault, Timeline
from simulators.fleet import (
    DeviceSpec, Fleet, SimDevice, fleet_specs, provision_flash, write_keys_file,
)
from simulators.micro import MicroDevice
from simulators.rogue import AttackFactory, Captured, OwnDevice, RogueClient, RogueConfig
from gateway.registry import Registry
from protocol import message
from protocol.auth import Signer
from protocol.topics import KIND_GPS, topic_for
from protocol.verify import DeviceKeys
from simulators.site import Site, SiteConfig

DEMO_PARAMS = {"gps_period_s": 10, "min_period_s": 5, "stationary_period_s": 30,
               "hb_interval_s": 30, "alarm_period_s": 5}
ROGUE_ID = "rogue-0001"
DEGRADED_LATENCY_MS = 800
DEGRADED_LOSS_PER_S = 0.02


@dataclass(frozen=True)
class ScenarioConfig:
    workdir: Path
    recorders: int = 8
    wristbands: int = 4
    micropython: int = 0
    duration_s: float = 30.0
    seed: int = 1
    tls: bool = True
    faults: tuple[Fault, ...] = ()
    params: tuple[tuple[str, int], ...] = tuple(sorted(DEMO_PARAMS.items()))
    drain_timeout_s: float = 60.0
    json_path: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.recorders <= 10000 or not 0 <= self.wristbands <= 10000:
            raise ValueError("recorders and wristbands must be 0..10000")
        if self.recorders + self.wristbands < 1:
            raise ValueError("a fleet needs at least one device")
        if not 0 <= self.micropython <= min(50, self.recorders + self.wristbands):
            raise ValueError("micropython must be 0..min(50, fleet size)")
        if not 1 <= self.duration_s <= 86400:
            raise ValueError("duration must be 1..86400 s")


@dataclass
class Outcome:
    report: Report
    gateway: dict[str, Any]
    fleet: dict[str, int]
    events: list[str] = field(default_factory=list)
    rogue: dict[str, int] = field(default_factory=dict)
    rotations: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checker": json.loads(self.report.to_json()),
                "gateway": self.gateway, "fleet": self.fleet, "events": self.events,
                "rogue": self.rogue, "rotations": self.rotations}


class Scenario:
    def __init__(self, cfg: ScenarioConfig,
                 progress: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.workdir)
        self.progress = progress or (lambda _ev, _st: None)
        self.specs = fleet_specs(cfg.recorders, cfg.wristbands, cfg.seed)
        self.rogue_spec = DeviceSpec(ROGUE_ID, "recorder", bytes(range(32)), 0)
        self.site = Site(SiteConfig(self.dir / "site", tls=cfg.tls),
                         self.specs + [self.rogue_spec])
        self.produced = ProducedLog(self.dir / "produced.jsonl", keep=True)
        self.attacks = AttackLog(self.dir / "attacks.jsonl", keep=True)
        self.events: list[str] = []
        self.rogue_result: dict[str, int] = {}
        self.rotations: list[tuple[str, int, str]] = []
        self.checker: Checker | None = None
        self.fleet: Fleet | None = None
        self.micro: list[MicroDevice] = []
        self._t0 = 0.0
        self._threads: list[threading.Thread] = []

    # ---- setup ----
    def _devices(self) -> None:
        params = dict(self.cfg.params)
        n_mp = self.cfg.micropython
        # the last recorders (or wristbands) run as real MicroPython processes
        mp_ids = {s.device_id for s in self.specs[-n_mp:]} if n_mp else set()
        sims = []
        for s in self.specs:
            flash = self.dir / "flash" / s.device_id
            tls = self.site.device_tls_files(s.device_id)
            if s.device_id in mp_ids:
                provision_flash(s, flash, "127.0.0.1", self.site.local_port, params, tls, "der")
                self.micro.append(MicroDevice(s, flash, self.produced, self.dir / "mp"))
            else:
                provision_flash(s, flash, "127.0.0.1", self.site.local_port, params, tls, "pem")
                sims.append(SimDevice(s.device_id, s.kind, flash, s.seed, self.produced,
                                      log_sink=self._device_log))
        self.fleet = Fleet(sims)

    def _device_log(self, device_id: str, line: str) -> None:
        if line.startswith("E "):
            self.event("%s: %s" % (device_id, line))

    def event(self, text: str) -> None:
        stamp = time.monotonic() - self._t0 if self._t0 else 0.0
        self.events.append("%6.1fs %s" % (stamp, text))
        self.progress("event", {"text": self.events[-1]})

    # ---- run ----
    def run(self) -> Outcome:
        cfg = self.cfg
        self.site.setup()
        self.site.start()
        self.site.wait_gateway_ready()
        write_keys_file(self.dir / "keys.json", self.specs + [self.rogue_spec])
        self.checker = Checker(CheckerConfig(port=self.site.upstream.port), self.produced,
                               self.attacks, load_keys(self.dir / "keys.json"))
        self.checker.tally.refresh_keys = self._registry_keys
        self.checker.start()
        self._devices()
        assert self.fleet is not None
        self._t0 = time.monotonic()
        try:
            for m in self.micro:
                m.start()
            self.fleet.start()
            timeline = Timeline(list(cfg.faults))
            self.fleet.run_for(cfg.duration_s, lambda mono: self._tick(mono, timeline))
            for phase, fault in timeline.due(float("inf")):
                if phase == "undo":            # end every fault still in force
                    self._apply(phase, fault, timeline)
            self._drain()
        finally:
            for t in self._threads:
                t.join(30)
            self.fleet.stop()
            for m in self.micro:
                m.stop()
        assert self.checker is not None
        self.checker.wait_idle(2.0, 30.0)
        report = self.checker.report()
        self.checker.stop()
        gateway = self.gateway_status()
        self.site.stop()
        out = Outcome(report, gateway, self.fleet.stats(), self.events, self.rogue_result,
                      self.rotations)
        if cfg.json_path is not None:
            Path(cfg.json_path).write_text(json.dumps(out.to_dict(), indent=1, sort_keys=True))
        return out

    def _tick(self, mono: float, timeline: Timeline) -> None:
        for phase, fault in timeline.due(mono - self._t0):
            self._apply(phase, fault, timeline)
        for m in self.micro:
            m.pump()
        assert self.fleet is not None
        st: dict[str, Any] = dict(self.fleet.stats())
        st["t"] = round(mono - self._t0, 1)
        st["micropython"] = sum(1 for m in self.micro if m.alive())
        self.progress("tick", st)

    def _missing(self) -> int:
        """Records produced and expected that have not arrived upstream yet."""
        assert self.checker is not None
        produced, evicted = self.produced.snapshot()
        gone = self.checker.arrived_ids() | {e.id for e in evicted}
        return sum(1 for p in produced if p.expect and p.id not in gone)

    def _drain(self) -> None:
        """Run on until everything produced has arrived upstream (or the timeout)."""
        assert self.fleet is not None
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        self.fleet.quiesce()
        self.event("drain: waiting for %d records" % self._missing())
        while time.monotonic() < deadline:
            self.fleet.run_for(0.5)
            for m in self.micro:
                m.pump()
            if self._missing() == 0 and not any(t.is_alive() for t in self._threads):
                self.event("drained")
                return
        self.event("drain timed out with %d records missing upstream" % self._missing())

    # ---- faults ----
    def _targets(self, fault: Fault) -> list[str]:
        return fault.pick([s.device_id for s in self.specs], self.cfg.seed)

    def _apply(self, phase: str, f: Fault, timeline: Timeline) -> None:
        assert self.fleet is not None
        now = time.monotonic() - self._t0
        undo = phase == "undo"
        if f.action in ("rotate_key", "rotate_cert"):
            # one operator session at a time: the broker forces client id = certificate
            # name, so two CLI processes with the operator's identity would evict each other
            t = threading.Thread(target=self._rotate_all, args=(self._targets(f), f.action),
                                 daemon=True)
            self._threads.append(t)
            t.start()
        elif f.action in ("link_outage", "power_cut", "clock_skew", "sos", "strap_cut",
                          "recording", "link_degraded", "battery"):
            ids = self._targets(f)
            for did in ids:
                self._device_fault(did, f, undo)
            self.event("%s %s on %s" % ("end of" if undo else "start", f.action,
                                       ids[0] if len(ids) == 1 else "%d devices" % len(ids)))
            if not undo and f.action in ("link_outage", "power_cut", "clock_skew", "sos",
                                         "link_degraded"):
                timeline.add(now + (f.arg if f.action != "sos" else 2.0), "undo", f)
        elif f.action == "broker_restart":
            assert self.site.local is not None
            self.site.local.restart()
            self.event("local broker restarted")
        elif f.action == "gateway_kill":
            if undo:
                self.site.start_gateway()
                self.event("gateway restarted")
            else:
                self.site.kill_gateway()
                self.event("gateway SIGKILLed")
                timeline.add(now + f.arg, "undo", f)
        elif f.action == "upstream_outage":
            if undo:
                self.site.upstream.start()
                self.event("upstream broker back")
            else:
                self.site.upstream.stop()
                self.event("upstream broker down")
                timeline.add(now + f.arg, "undo", f)
        elif f.action == "attack":
            t = threading.Thread(target=self._attack, daemon=True)
            self._threads.append(t)
            t.start()

    def _device_fault(self, did: str, f: Fault, undo: bool) -> None:
        assert self.fleet is not None
        sim = self.fleet.by_id.get(did)
        micro = next((m for m in self.micro if m.spec.device_id == did), None)
        line = {
            "link_outage": "link up" if undo else "link down",
            "sos": "sos 0" if undo else "sos 1",
            "strap_cut": "strap open",
            "recording": "recording 1",
        }.get(f.action)
        if line is not None:
            if sim is not None:
                sim.control(line)
            elif micro is not None:
                micro.control(line)
            return
        if f.action == "power_cut":
            if sim is not None:
                if undo:
                    sim.boot(int(time.monotonic() * 1000), reset_cause=0)
                else:
                    lost = sim.power_cut()
                    if lost:
                        self.event("%s lost %d records of its RAM tail" % (did, lost))
            elif micro is not None:
                micro.power_cut() if not undo else micro.start()
        elif f.action == "link_degraded" and sim is not None:
            sim.link.latency_ms = 0 if undo else DEGRADED_LATENCY_MS
            sim.link.loss_per_s = 0.0 if undo else DEGRADED_LOSS_PER_S
        elif f.action == "battery" and sim is not None:
            sim.battery.set_level(f.arg)
        elif f.action == "clock_skew" and sim is not None:
            sim.clock.skew_s = 0 if undo else int(f.arg)
            sim.clock.synced = True

    def _registry_keys(self) -> dict[str, DeviceKeys]:
        """The platform's view of the keys: every usable key in the site's registry."""
        now = time.time()
        return {d.device_id: DeviceKeys(d.usable_keys(now), d.revoked)
                for d in Registry(self.site.dir / "registry.json").all()}

    def _rotate_all(self, device_ids: list[str], action: str) -> None:
        for did in device_ids:
            self._rotate(did, action)

    def _rotate(self, device_id: str, action: str) -> None:
        """``python -m gateway command DEVICE rotate_key|rotate_cert`` as an operator would."""
        site = self.dir / "site"
        extra = ["--grace-s", "600"] if action == "rotate_key" else [
            "--pki", str(site / "pki"), "--broker-dir", str(site / "local")]
        try:
            out = subprocess.run([sys.executable, "-m", "gateway", "command", device_id,
                                  action, "--timeout", "20", *extra,
                                  "--config", str(site / "gateway-cli.toml")],
                                 capture_output=True, text=True, timeout=60)
            self.rotations.append((device_id, out.returncode, out.stdout.strip()[-300:]))
            self.event("%s %s: %s" % (action, device_id, "acked" if out.returncode == 0
                                         else "no ack (%d): %s" % (out.returncode,
                                                                   out.stderr[-200:])))
        except (OSError, subprocess.TimeoutExpired) as e:
            self.rotations.append((device_id, -1, str(e)))
            self.event("%s %s failed: %s" % (action, device_id, e))

    def _attack(self) -> None:
        """The rogue: its own enrolled device, legit samples from a tap, every attack."""
        legit = self._tap_samples()
        tls = None
        if self.cfg.tls:
            pki = self.site.pki
            tls = {"cafile": str(pki.ca_cert_path), "certfile": str(pki.cert_path(ROGUE_ID)),
                   "keyfile": str(pki.key_path(ROGUE_ID))}
        rcfg = RogueConfig(port=self.site.local_port, client_id=ROGUE_ID, seed=self.cfg.seed,
                           per_kind=4, flood_count=200, flood_rate=400.0, tls=tls)
        factory = AttackFactory(self.cfg.seed, legit, [s.device_id for s in self.specs[:5]],
                                OwnDevice(ROGUE_ID, self.rogue_spec.key))
        self.event("rogue client attacking with %d legit samples" % len(legit))
        # The rogue's own topics pass the broker's ACL: there the gateway has to
        # refuse what is tampered or forged (its own signed records are never sent).
        own = self.rogue_spec
        own_samples = [Captured(topic_for(ROGUE_ID, KIND_GPS), message.encode(
            Signer(ROGUE_ID, own.key, 0), KIND_GPS, 1, i, int(time.time()), {
                "lat_e7": 359900000 + i, "lon_e7": 1194000000, "alt_m": 40, "speed_cms": 0,
                "course_cdeg": 0, "hdop_x10": 9, "fix": 2, "sats": 9, "gnss": 9,
                "age_s": 0})) for i in range(4)]
        own_factory = AttackFactory(self.cfg.seed + 1, own_samples, [ROGUE_ID])
        try:
            with RogueClient(rcfg, self.attacks) as rogue:
                result = rogue.run(factory)
                result = rogue.run(own_factory, kinds=("tampered", "forged"))
            self.rogue_result = {"logged": sum(result.logged.values()),
                                 "published": result.published,
                                 "raw_sent": result.raw_sent,
                                 "raw_refused": result.raw_refused}
            self.event("rogue done: %d attack messages" % self.rogue_result["logged"])
        except Exception as e:  # noqa: BLE001 - reported, the run goes on
            self.event("rogue failed: %s" % e)

    def _tap_samples(self) -> list[Captured]:
        """Legit traffic as a network tap (or a compromised gateway) would have it."""
        import paho.mqtt.client as mqtt
        got: list[Captured] = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.site.cli_id)
        if self.cfg.tls:
            pki = self.site.pki
            c.tls_set(ca_certs=str(pki.ca_cert_path), certfile=str(pki.cert_path(
                self.site.cli_id)), keyfile=str(pki.key_path(self.site.cli_id)))
        c.on_connect = lambda cl, *a: cl.subscribe("ft/v1/+/+", 0)
        c.on_message = lambda _c, _u, m: got.append(Captured(m.topic, bytes(m.payload))) \
            if len(got) < 40 and not m.topic.endswith("/cmd") else None
        try:
            c.connect("127.0.0.1", self.site.local_port, 30)
        except OSError:
            return got
        c.loop_start()
        deadline = time.monotonic() + 8
        while len(got) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        c.disconnect()
        c.loop_stop()
        return got

    def gateway_status(self) -> dict[str, Any]:
        try:
            out = subprocess.run([sys.executable, "-m", "gateway", "status", "--json",
                                  "--interval", "0.2", "--config",
                                  str(self.site.gateway_config)],
                                 capture_output=True, text=True, timeout=60)
            return dict(json.loads(out.stdout)) if out.returncode == 0 else {
                "error": out.stderr.strip()[-300:]}
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            return {"error": str(e)}
