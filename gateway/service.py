"""The running gateway: ingest -> verify -> group commit -> ack -> forward.

Threads: one paho loop per local connection (feeding a bounded queue), the
committer (this module: verifies, commits, acknowledges — the only SQLite
writer), the forwarder (upstream). The committer also applies upstream
acknowledgements (deletes), liveness timeouts and TTLs in the same commits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from gateway.commands import UNCONFIRMED_S
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.forwarder import Forwarder
from gateway.ingest import Feed, Item, LocalConnection
from gateway.liveness import LivenessTracker
from gateway.pipeline import Accepted, Rejected, decide, protocol_limits
from gateway.registry import KeyCache, Registry
from gateway.store import ACKED, CommitBatch, Store
from protocol.errors import KEY_UNKNOWN, UNKNOWN_DEVICE
from protocol.replay import ReplayWindow

log = logging.getLogger("gateway")

TICK_EVERY_S = 0.5
LOG_REJECTIONS_PER_S = 20
RELOAD_REASONS = (KEY_UNKNOWN, UNKNOWN_DEVICE)


class Gateway:
    def __init__(self, cfg: GatewayConfig, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.store = Store(cfg.store_path, cfg.lanes, cfg.gateway_id, cfg.ingest.sync,
                           cfg.quarantine_max)
        self.cmd_epoch = self.store.bump_meta("cmd_epoch")
        self.keys = KeyCache(Registry(cfg.registry_path))
        self.keys.refresh(clock(), force=True)
        self.windows: dict[tuple[str, int], ReplayWindow] = self.store.load_windows()
        self._unconfirmed: dict[str, tuple[int, ...]] = {}
        self._confirm: set[str] = set()
        self._keys_reloads = -1
        self.liveness = LivenessTracker(cfg.liveness)
        self.liveness.restore(self.store.load_liveness())
        self.inq = Feed(cfg.ingest.queue_max)
        self.acked: deque[list[ACKED]] = deque()
        self.forwarder = Forwarder(cfg, self.acked.append)
        self.conns = [LocalConnection(cfg.local, 0, self.inq)]
        self.plimits = protocol_limits(cfg.limits)
        self.stopping = threading.Event()
        self.next_tick = 0.0
        self.commits = 0
        self.last_commit_s = 0.0
        self.snapshot: dict[str, int] = dict(self.store.counters)
        self.lane_snapshot = (list(self.store.lane_rows), list(self.store.lane_bytes))
        self.alert_logged = [False] * len(cfg.lanes)
        self._log_second = 0
        self._log_budget = LOG_REJECTIONS_PER_S
        self._log_suppressed = 0

    def _note_unconfirmed(self) -> None:
        """Devices with a key rotation sent but not yet confirmed (the old key
        kept valid "for ever", commands.UNCONFIRMED_S): device -> new key id."""
        horizon = self.clock() + UNCONFIRMED_S / 2
        self._unconfirmed = {}
        for dev in self.keys.devices.values():
            if any(k.valid_until is not None and k.valid_until > horizon for k in dev.keys):
                self._unconfirmed[dev.device_id] = (dev.current_key_id,)
        self._keys_reloads = self.keys.reloads

    def _confirm_rotations(self, now: float) -> None:
        """A record signed with the new key proves the device has it, even when
        the rotate_key ack was lost: start the old key's grace period now."""
        registry = self.keys.registry
        for device in sorted(self._confirm):
            dev = self.keys.devices.get(device)
            if dev is None:
                continue
            for k in dev.keys:
                if k.key_id != dev.current_key_id and k.valid_until is not None \
                        and k.valid_until > now + UNCONFIRMED_S / 2:
                    try:
                        registry.expire_key(device, k.key_id, now + self.cfg.rotation_grace_s)
                        log.info("key rotation confirmed by a record", extra={
                            "device": device, "key_id": dev.current_key_id})
                    except GatewayError as e:
                        log.warning("rotation confirm failed", extra={"device": device,
                                                                      "error": str(e)})
            self._unconfirmed.pop(device, None)
        self._confirm.clear()

    def _window_of(self, device: str, lane: int) -> ReplayWindow | None:
        return self.windows.get((device, lane))

    # ---- lifecycle ----

    def start(self) -> None:
        self.forwarder.start()
        for c in self.conns:
            c.start()
        log.info("gateway started", extra={"gateway": self.cfg.gateway_id,
                                           "cmd_epoch": self.cmd_epoch})

    def run(self) -> None:
        self.start()
        try:
            while not self.stopping.is_set():
                self.step()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        # Stop taking messages first (a paho thread waiting on a full feed returns),
        # then commit and acknowledge what was received while the connection is
        # still up, so that the PUBACKs go out before the DISCONNECT.
        self.inq.close()
        while len(self.inq):
            self.step(0.0)
        for c in self.conns:
            c.stop()
        self.inq.discard()     # a put that raced with close: not committed, not acked
        self.forwarder.stop()
        self.step(0.0)
        self.store.close()
        log.info("gateway stopped", extra={"gateway": self.cfg.gateway_id})

    def stop(self) -> None:
        self.stopping.set()

    # ---- one group commit ----

    def _drain(self, timeout: float) -> list[Item]:
        return self.inq.take(self.cfg.ingest.batch_max, timeout,
                             self.cfg.ingest.linger_ms / 1000.0)

    def step(self, timeout: float = 0.1) -> int:
        """Receive, verify and commit one batch, then acknowledge it. Returns its size."""
        items = self._drain(timeout)
        now = self.clock()
        self.keys.refresh(now)
        if self.keys.reloads != self._keys_reloads:
            self._note_unconfirmed()
        b = CommitBatch()
        cfg = self.cfg
        lookup = self.keys.lookup
        window_of = self._window_of
        observe = self.liveness.observe
        records = b.records
        accepted = 0
        for topic, payload, _mid, _qos, t, _conn, _gen in items:
            d = decide(topic, payload, lookup, window_of, t, cfg.limits, self.plimits,
                       cfg.gateway_id)
            if (not isinstance(d, Accepted) and d.reason in RELOAD_REASONS
                    and self.keys.refresh(now, check_now=True)):
                # the registry changed since the last periodic check (a device was
                # just added or its key rotated): decide again with the new keys
                d = decide(topic, payload, lookup, window_of, t, cfg.limits, self.plimits,
                           cfg.gateway_id)
            if isinstance(d, Accepted):
                if d.key_id in self._unconfirmed.get(d.device, ()):
                    self._confirm.add(d.device)
                key = (d.device, d.replay_lane)
                self.windows[key] = d.window
                b.windows[key] = d.window
                records.append((d.lane, t, d.record))
                observe(d.device, t, d.kind, d.body)
                accepted += 1
            elif d.quarantined:
                b.count("rejected:" + d.reason)
                b.quarantine.append((t, d.reason, d.device, d.topic, d.detail, d.sample))
                self._log_rejection(d, now)
            else:
                b.count(d.reason)
        if accepted:
            b.count("accepted", accepted)
        while self.acked:
            b.acked.extend(self.acked.popleft())
        ticked = now >= self.next_tick
        if ticked:
            self.next_tick = now + TICK_EVERY_S
            for tr in self.liveness.tick(now):
                b.transitions.append((tr.device, tr.state, tr.since, tr.reason))
                log.info("liveness", extra={"device": tr.device, "state": tr.state,
                                            "reason": tr.reason})
        if b.records or ticked:
            b.liveness = self.liveness.take_dirty()
        if not b.empty() or (ticked and self.store.ttl_due(now)):
            t0 = time.perf_counter()
            self.store.commit(b, now)
            self.last_commit_s = time.perf_counter() - t0
            self.commits += 1
        if self._confirm:
            self._confirm_rotations(now)
        acks: dict[tuple[LocalConnection, int], list[int]] = {}
        for _topic, _payload, mid, qos, _t, conn, gen in items:
            if qos:
                acks.setdefault((conn, gen), []).append(mid)
        for (conn, gen), mids in acks.items():
            conn.ack_many(mids, gen)
        if b.records:
            self.forwarder.wake.set()
        if b.counts:
            self.snapshot = dict(self.store.counters)
            self.lane_snapshot = (list(self.store.lane_rows), list(self.store.lane_bytes))
        self._alerts()
        return len(items)

    def _log_rejection(self, d: Rejected, now: float) -> None:
        """At most LOG_REJECTIONS_PER_S lines a second; the rest are counted, not logged."""
        if int(now) != self._log_second:
            if self._log_suppressed:
                log.warning("rejections not logged", extra={"count": self._log_suppressed})
            self._log_second, self._log_budget, self._log_suppressed = (
                int(now), LOG_REJECTIONS_PER_S, 0)
        if self._log_budget > 0:
            self._log_budget -= 1
            log.info("rejected", extra={"reason": d.reason, "device": d.device,
                                        "topic": d.topic, "detail": d.detail})
        else:
            self._log_suppressed += 1

    def _alerts(self) -> None:
        for lane, over in enumerate(self.store.over_quota):
            if over and not self.alert_logged[lane]:
                log.error("lane over quota; alarms are kept, not evicted",
                          extra={"lane": lane, "bytes": self.store.lane_bytes[lane]})
            self.alert_logged[lane] = over
