"""The upstream side: batches from the store to the central broker, QoS 1.

One connection at a time, each a fresh paho client (clean session): what it
had in flight when it died is simply sent again by the next one, read back
from the store, because a record leaves the store only after its PUBACK.
Each lane keeps a cursor (the last row id sent on this connection); every
batch is picked alarm lane first, so after an outage alarms go first.
Order per device is kept: rows are read and published in id order per lane
on one connection. Reconnects back off exponentially with full jitter.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from gateway.config import GatewayConfig
from gateway.errors import UpstreamError
from gateway.ingest import make_client
from gateway.pipeline import LANE_NAMES, batch_payload
from gateway.store import ACKED, Reader

log = logging.getLogger("gateway.forwarder")


def upstream_topic(gateway_id: str, lane: int) -> str:
    return "ft/up/v1/%s/%s" % (gateway_id, LANE_NAMES[lane])


def backoff_delays(initial: float, maximum: float, rng: random.Random) -> Any:
    """Exponential backoff with jitter: uniform(initial / 2, min(max, initial * 2**n)),
    never quicker than half the initial delay."""
    cap = initial
    while True:
        yield rng.uniform(initial / 2, cap)
        cap = min(maximum, cap * 2)


class Forwarder:
    def __init__(self, cfg: GatewayConfig, on_acked: Callable[[list[ACKED]], None]) -> None:
        self.cfg = cfg
        self.up = cfg.upstream
        self.on_acked = on_acked
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.done: deque[int] = deque()          # mids acknowledged by upstream
        self.inflight: dict[int, list[ACKED]] = {}
        self.batches_sent = 0
        self.records_sent = 0
        self.records_acked = 0
        self.sessions = 0
        self.thread: threading.Thread | None = None
        self._partial_since: dict[int, float] = {}

    # ---- lifecycle ----

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="forwarder", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        reader = Reader(self.cfg.store_path)
        delays = backoff_delays(self.up.backoff_initial_s, self.up.backoff_max_s, random.Random())
        try:
            while not self.stopping.is_set():
                try:
                    if self._session(reader):
                        delays = backoff_delays(self.up.backoff_initial_s,
                                                self.up.backoff_max_s, random.Random())
                except (OSError, UpstreamError) as e:
                    log.warning("upstream unavailable", extra={"error": str(e)})
                self.stopping.wait(next(delays))
        finally:
            reader.close()

    # ---- one connection ----

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        if not rc.is_failure:
            self.connected.set()
        self.wake.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any = None) -> None:
        self.connected.clear()
        self.wake.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any,
                    props: Any = None) -> None:
        # paho calls this holding its own message lock: take no lock here (deque
        # appends are atomic); the forwarder thread matches mids to batches.
        self.done.append(mid)
        self.wake.set()

    def _session(self, reader: Reader) -> bool:
        """Run one upstream connection until it drops; True if it was established."""
        b = self.up.broker
        client = make_client(b, b.client_id, clean_session=True)
        client.max_inflight_messages_set(self.up.max_inflight)
        client.max_queued_messages_set(self.up.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.connected.clear()
        self.done.clear()
        self.inflight = {}
        client.connect(b.host, b.port, b.keepalive_s)
        client.loop_start()
        try:
            if not self.connected.wait(b.connect_timeout_s):
                raise UpstreamError("no CONNACK within %.1f s" % b.connect_timeout_s)
            self.sessions += 1
            log.info("upstream connected", extra={"host": b.host, "port": b.port})
            cursors = [0] * len(LANE_NAMES)
            while not self.stopping.is_set() and self.connected.is_set():
                self.wake.clear()
                self._collect_acks()
                wait = self._fill(client, reader, cursors)
                self.wake.wait(wait)
            self._collect_acks()
            return True
        finally:
            client.disconnect()
            client.loop_stop()
            log.info("upstream session ended", extra={"inflight": len(self.inflight)})

    def _collect_acks(self) -> None:
        rows: list[ACKED] = []
        while self.done:
            batch = self.inflight.pop(self.done.popleft(), None)
            if batch:
                rows.extend(batch)
        if rows:
            self.records_acked += len(rows)
            self.on_acked(rows)

    def _fill(self, client: mqtt.Client, reader: Reader, cursors: list[int]) -> float:
        """Publish batches while the window allows; returns how long to wait next.

        A partial batch waits up to ``linger_ms`` for more records while an
        earlier batch is still in flight (with nothing in flight it goes at once).
        """
        linger = self.up.linger_ms / 1000.0
        wait = 1.0
        while len(self.inflight) < self.up.max_inflight:
            sent = False
            for lane in range(len(LANE_NAMES)):
                rows = reader.fetch(lane, cursors[lane], self.up.batch_max_records)
                if not rows:
                    continue
                if len(rows) < self.up.batch_max_records and self.inflight and linger > 0:
                    now = time.monotonic()
                    first = self._partial_since.setdefault(lane, now)
                    if now - first < linger:
                        wait = min(wait, linger - (now - first))
                        continue
                self._partial_since.pop(lane, None)
                self._publish(client, lane, rows)
                cursors[lane] = rows[-1][0]
                sent = True
                break  # start again from the alarm lane
            if not sent:
                break
        return wait

    def _publish(self, client: mqtt.Client, lane: int, rows: list[tuple[int, int, str]]) -> None:
        limit = self.up.batch_max_bytes
        total = 0
        n = 0
        for _, size, _ in rows:
            if n and total + size > limit:
                break
            total += size
            n += 1
        del rows[n:]
        payload = batch_payload(self.cfg.gateway_id, [r[2] for r in rows])
        info = client.publish(upstream_topic(self.cfg.gateway_id, lane), payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            raise UpstreamError("publish failed: %s" % mqtt.error_string(info.rc))
        self.inflight[info.mid] = [(r[0], lane, r[1]) for r in rows]
        self.batches_sent += 1
        self.records_sent += n

