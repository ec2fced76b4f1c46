"""Board parts with behaviour over time, for the in-process fleet.

* ``DrainingBattery``: discharges with use (a recorder lasts a shift, longer
  when not recording; a wristband two to three days) and charges when
  ``is_charging`` is set — so low-battery alarms happen by themselves.
* ``ImpairedLink``: the firmware's TcpLink with a 4G link's imperfections:
  extra one-way latency on what the device sends and loss, modelled as the
  connection dropping (what a TCP session over a lossy cell does, seen from
  MQTT) at a rate per second. Both are set by faults and default to none.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

from firmware.boards.base import Battery
from firmware.boards.tcplink import TcpLink

# percent per hour
DRAIN_PER_H = {"recorder": 8.0, "recorder_recording": 12.0, "wristband": 1.6}
CHARGE_PER_H = 40.0
MAX_DELAYED_BYTES = 64 * 1024


class DrainingBattery(Battery):
    def __init__(self, kind: str, start_pct: float, recording: Any = None) -> None:
        super().__init__(int(start_pct))
        self.kind = kind
        self.level = float(start_pct)
        self.recording = recording          # callable -> bool, for the recorder
        self._t = time.monotonic()

    def percent(self) -> int:
        now = time.monotonic()
        hours = (now - self._t) / 3600
        self._t = now
        if self.is_charging:
            self.level = min(100.0, self.level + CHARGE_PER_H * hours)
        else:
            rate = DRAIN_PER_H["wristband"] if self.kind == "wristband" else (
                DRAIN_PER_H["recorder_recording"] if self.recording and self.recording()
                else DRAIN_PER_H["recorder"])
            self.level = max(0.0, self.level - rate * hours)
        self.pct = int(self.level)
        return self.pct

    def set_level(self, pct: float) -> None:
        self.level = max(0.0, min(100.0, float(pct)))
        self._t = time.monotonic()


class _ImpairedTransport:
    """Wraps a transport: writes leave after ``latency_ms``; reads may find the link lost."""

    def __init__(self, inner: Any, link: ImpairedLink) -> None:
        self.inner = inner
        self.link = link
        self.pending: deque[tuple[float, bytes]] = deque()
        self.pending_bytes = 0
        self._last = time.monotonic()

    @property
    def sock(self) -> Any:
        return getattr(self.inner, "sock", None)

    def ready(self) -> bool:
        return bool(self.inner.ready())

    def _flush(self) -> None:
        now = time.monotonic()
        while self.pending and self.pending[0][0] <= now:
            due, data = self.pending[0]
            n = self.inner.write(memoryview(data))
            if n < len(data):
                self.pending[0] = (due, data[n:])
                self.pending_bytes -= n
                return
            self.pending.popleft()
            self.pending_bytes -= len(data)

    def write(self, mv: Any) -> int:
        self._flush()
        if self.link.latency_ms <= 0 and not self.pending:
            return int(self.inner.write(mv))
        if self.pending_bytes + len(mv) > MAX_DELAYED_BYTES:
            return 0
        data = bytes(mv)
        self.pending.append((time.monotonic() + self.link.latency_ms / 1000, data))
        self.pending_bytes += len(data)
        return len(data)

    def readinto(self, mv: Any) -> int:
        self._flush()
        now = time.monotonic()
        dt, self._last = now - self._last, now
        if self.link.loss_per_s > 0 and self.link.rng.random() < self.link.loss_per_s * dt:
            self.link.drops += 1
            raise OSError(104, "link lost (simulated 4G loss)")
        return int(self.inner.readinto(mv))

    def close(self) -> None:
        self.inner.close()


class ImpairedLink(TcpLink):
    def __init__(self, base_dir: str, seed: int) -> None:
        super().__init__(base_dir)
        self.latency_ms = 0
        self.loss_per_s = 0.0
        self.drops = 0
        self.rng = random.Random("link:%d" % seed)

    def open(self, host: str, port: int, tls: Any, timeout_ms: int) -> Any:
        inner = super().open(host, port, tls, timeout_ms)
        self.transport = _ImpairedTransport(inner, self)
        return self.transport

    def has_delayed(self) -> bool:
        t = self.transport
        return isinstance(t, _ImpairedTransport) and bool(t.pending)
