"""The fault schedule: what goes wrong, when, to whom. Pure parsing and timing.

One fault per line of a schedule file (``#`` starts a comment) or per
``--fault`` flag, as ``AT:ACTION[:ARG[:DEVICES]]`` with AT in seconds from
the start of the run:

    20:link_outage:15:rec-0001,rec-0002   4G link down for 15 s
    30:power_cut:5:wb-0003                power lost for 5 s, then reboot
    40:clock_skew:120:10%                 device clocks 120 s ahead
    25:sos::rec-0001                      SOS button pressed (released 2 s later)
    25:strap_cut::wb-0001                 strap cut (stays cut)
    35:recording::rec-0002                recording starts
    38:rotate_key::rec-0004               HMAC key rotated by a signed command
    39:rotate_cert::rec-0004              TLS key and certificate rotated over the air
    15:link_degraded:30:20%               4G at its worst for 30 s: +800 ms, drops 2 %/s
    16:battery:12:wb-0002                 battery level set to 12 % (it drains by itself)
    45:broker_restart                     local mosquitto stopped and started
    50:gateway_kill:3                     gateway SIGKILLed, restarted 3 s later
    60:upstream_outage:20                 platform broker down for 20 s
    70:attack                             the rogue client's attack set

DEVICES is a comma-separated list of ids, ``*`` for all, ``N%`` for that
share of the fleet or ``N`` (a plain number) for that many, chosen
reproducibly from the run's seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

DEVICE_FAULTS = {"link_outage", "power_cut", "clock_skew", "sos", "strap_cut", "recording",
                 "rotate_key", "rotate_cert", "link_degraded", "battery"}
SITE_FAULTS = {"broker_restart", "gateway_kill", "upstream_outage", "attack"}
NEEDS_ARG = {"link_outage", "power_cut", "clock_skew", "gateway_kill", "upstream_outage",
             "link_degraded", "battery"}
MAX_AT_S = 7 * 86400


class FaultError(ValueError):
    """A fault line that does not parse; the message says which and why."""


@dataclass(frozen=True)
class Fault:
    at_s: float
    action: str
    arg: float = 0.0
    devices: str = ""

    def pick(self, ids: list[str], seed: int) -> list[str]:
        """The device ids this fault hits."""
        sel = self.devices.strip()
        if sel == "*":
            return list(ids)
        rng = random.Random("%d:%s:%s" % (seed, self.action, self.at_s))
        if sel.endswith("%") or sel.isdigit():
            n = round(len(ids) * float(sel[:-1]) / 100) if sel.endswith("%") else int(sel)
            return sorted(rng.sample(ids, max(1, min(n, len(ids)))))
        wanted = [s for s in sel.split(",") if s]
        unknown = [w for w in wanted if w not in ids]
        if unknown:
            raise FaultError("fault %s at %gs names unknown devices: %s"
                             % (self.action, self.at_s, ", ".join(unknown[:5])))
        return wanted


def parse_fault(text: str) -> Fault:
    parts = text.strip().split(":")
    if len(parts) < 2 or len(parts) > 4:
        raise FaultError("%r: expected AT:ACTION[:ARG[:DEVICES]]" % text)
    try:
        at = float(parts[0])
    except ValueError:
        raise FaultError("%r: AT must be seconds, got %r" % (text, parts[0])) from None
    if not 0 <= at <= MAX_AT_S:
        raise FaultError("%r: AT must be within 0..%d s" % (text, MAX_AT_S))
    action = parts[1].strip()
    if action not in DEVICE_FAULTS | SITE_FAULTS:
        raise FaultError("%r: unknown action %r (one of %s)" % (
            text, action, ", ".join(sorted(DEVICE_FAULTS | SITE_FAULTS))))
    arg = 0.0
    if len(parts) > 2 and parts[2].strip():
        try:
            arg = float(parts[2])
        except ValueError:
            raise FaultError("%r: ARG must be a number, got %r" % (text, parts[2])) from None
        if not -MAX_AT_S <= arg <= MAX_AT_S:
            raise FaultError("%r: ARG out of range" % text)
    if action in NEEDS_ARG and arg == 0:
        raise FaultError("%r: %s needs a duration or offset in seconds" % (text, action))
    devices = parts[3].strip() if len(parts) > 3 else ""
    if action in DEVICE_FAULTS and not devices:
        raise FaultError("%r: %s needs DEVICES (ids, *, N%% or N)" % (text, action))
    if action in SITE_FAULTS and devices:
        raise FaultError("%r: %s applies to the site, not to devices" % (text, action))
    return Fault(at, action, arg, devices)


def load_schedule(path: str | Path | None = None, flags: list[str] | None = None) -> list[Fault]:
    faults: list[Fault] = []
    if path is not None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as e:
            raise FaultError("cannot read fault schedule %s: %s" % (path, e)) from None
        for no, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if line:
                try:
                    faults.append(parse_fault(line))
                except FaultError as e:
                    raise FaultError("%s:%d: %s" % (path, no, e)) from None
    for f in flags or []:
        faults.append(parse_fault(f))
    return sorted(faults, key=lambda f: f.at_s)


class Timeline:
    """Faults and their undo actions in time order; ``due(t)`` pops what is due."""

    def __init__(self, faults: list[Fault]) -> None:
        self.pending: list[tuple[float, int, str, Fault]] = []
        self._n = 0
        for f in faults:
            self.add(f.at_s, "start", f)

    def add(self, at_s: float, phase: str, fault: Fault) -> None:
        self._n += 1
        self.pending.append((at_s, self._n, phase, fault))
        self.pending.sort(key=lambda p: (p[0], p[1]))

    def due(self, t_s: float) -> list[tuple[str, Fault]]:
        out = []
        while self.pending and self.pending[0][0] <= t_s:
            _, _, phase, fault = self.pending.pop(0)
            out.append((phase, fault))
        return out

    def __len__(self) -> int:
        return len(self.pending)
