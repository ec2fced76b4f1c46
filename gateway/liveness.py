"""Device liveness, pure: online / unknown / offline with a fake-able clock.

A device is *online* on any accepted record, *unknown* after
``unknown_factor`` x its heartbeat interval without one, *offline* after
``offline_factor`` x, or at once on a status record ``offline`` (its last
will) or ``shutdown``. The heartbeat interval comes from its hb and status
bodies (``hb_interval_s``).

Transitions are debounced per device: at most one is emitted per
``debounce_s``; a state that changes back and forth in between emits
nothing more, and the state it settles in is emitted when the period ends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from gateway.config import LivenessConfig
from protocol.topics import KIND_HB, KIND_STATUS

ONLINE = "online"
UNKNOWN = "unknown"
OFFLINE = "offline"
STATES = (ONLINE, UNKNOWN, OFFLINE)


@dataclass(frozen=True)
class DeviceLiveness:
    state: str
    since: float
    reason: str
    last_seen: float
    hb_interval_s: float
    emitted: str            # "" until the first transition went upstream
    emitted_at: float


@dataclass(frozen=True)
class Transition:
    device: str
    state: str
    since: float
    reason: str


class LivenessTracker:
    def __init__(self, cfg: LivenessConfig) -> None:
        self.cfg = cfg
        self.devices: dict[str, DeviceLiveness] = {}
        self._changed: set[str] = set()
        self._dirty: set[str] = set()
        self._seen: dict[str, float] = {}   # fast path: last_seen of online devices

    def restore(self, entries: dict[str, DeviceLiveness]) -> None:
        self.devices.update(entries)
        self._changed.update(d for d, e in entries.items() if e.state != e.emitted)

    def _set(self, device: str, e: DeviceLiveness) -> None:
        self.devices[device] = e
        self._dirty.add(device)
        if e.state != e.emitted:
            self._changed.add(device)

    def observe(self, device: str, now: float, kind: int, body: dict[str, Any]) -> None:
        """An accepted record of ``device`` arrived at ``now``."""
        e = self.devices.get(device)
        if e is not None and e.state == ONLINE and kind != KIND_HB and kind != KIND_STATUS:
            self._seen[device] = now        # nothing changes but the time: no copy
            return
        self._fold()
        hb = e.hb_interval_s if e else self.cfg.default_hb_interval_s
        if kind == KIND_HB or kind == KIND_STATUS:
            hb = float(body.get("hb_interval_s") or hb)
        state, reason = ONLINE, "record"
        if kind == KIND_STATUS and body.get("state") in ("offline", "shutdown"):
            state, reason = OFFLINE, "last_will" if body["state"] == "offline" else "shutdown"
        if e is None:
            self._set(device, DeviceLiveness(state, now, reason, now, hb, "", 0.0))
        elif e.state != state:
            self._set(device, replace(e, state=state, since=now, reason=reason,
                                      last_seen=now, hb_interval_s=hb))
        else:
            self.devices[device] = replace(e, last_seen=now, hb_interval_s=hb)
            self._dirty.add(device)

    def _fold(self) -> None:
        for device, t in self._seen.items():
            e = self.devices[device]
            if t > e.last_seen:
                self.devices[device] = replace(e, last_seen=t)
                self._dirty.add(device)
        self._seen.clear()

    def _timeout(self, e: DeviceLiveness) -> tuple[str, float] | None:
        if e.state == OFFLINE:
            return None
        off_at = e.last_seen + self.cfg.offline_factor * e.hb_interval_s
        unk_at = e.last_seen + self.cfg.unknown_factor * e.hb_interval_s
        return (OFFLINE, off_at) if e.state == UNKNOWN else (UNKNOWN, unk_at)

    def tick(self, now: float) -> list[Transition]:
        """Apply timeouts due at ``now``; return the transitions to emit."""
        self._fold()
        for device, e in list(self.devices.items()):
            while True:
                t = self._timeout(e)
                if t is None or now < t[1]:
                    break
                e = replace(e, state=t[0], since=t[1], reason="heartbeat_timeout")
                self._set(device, e)
        out = []
        for device in list(self._changed):
            e = self.devices[device]
            if e.state == e.emitted:
                self._changed.discard(device)
                continue
            if e.emitted and now - e.emitted_at < self.cfg.debounce_s:
                continue  # held back; emitted when the debounce period ends
            out.append(Transition(device, e.state, e.since, e.reason))
            self.devices[device] = replace(e, emitted=e.state, emitted_at=now)
            self._dirty.add(device)
            self._changed.discard(device)
        return out

    def take_dirty(self) -> dict[str, DeviceLiveness]:
        """Entries changed since the last call (for the store)."""
        self._fold()
        out = {d: self.devices[d] for d in self._dirty}
        self._dirty.clear()
        return out

    def counts(self) -> dict[str, int]:
        c = {s: 0 for s in STATES}
        for e in list(self.devices.values()):   # atomic copy: metrics read from another thread
            c[e.state] += 1
        return c
