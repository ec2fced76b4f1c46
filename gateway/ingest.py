"""The local-broker side: paho clients feeding the committer's bounded queue.

Each connection has a persistent session (clean_session false, fixed client
id) and ``manual_ack``: a QoS 1 message is acknowledged only when the
committer says its verdict is durable. If the gateway dies, the broker
redelivers whatever was not acknowledged. There is one connection: a
shared subscription (``$share/...``) would hand a device's records to
several connections in turn and reorder them beyond the replay window.
The broker's ``max_inflight_messages`` must stay within that window too
(brokerconf writes 100): after a crash it redelivers at most that many
committed-but-unacknowledged records, which then count as duplicates.

An acknowledgement is only sent on the connection (generation) that
received the message: after a reconnect the old message ids mean nothing,
and the broker redelivers those messages anyway (they become duplicates).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import BrokerConfig, LocalConfig
from gateway.fastpaho import FastClient, Publish
from gateway.pipeline import truncated

log = logging.getLogger("gateway.ingest")

OVERSIZE_KEEP = 1024    # bytes kept of a payload that is too large anyway (limit <= 128)

# (topic, payload, mid, qos, received_at, connection, generation)
Item = tuple[str | bytes, bytes | bytearray, int, int, float, "LocalConnection", int]


class Feed:
    """Bounded hand-off from the paho threads to the committer.

    A deque (appends and pops are atomic) plus an Event to wake the committer:
    cheaper per message than ``queue.Queue``. Bound: ``maxsize``; when full the
    paho thread waits (backpressure: the broker keeps the rest, unacknowledged)
    and each wait is counted. Once closed (stopping) it takes nothing more:
    what it refuses was never acknowledged, so the broker redelivers it.
    """

    def __init__(self, maxsize: int) -> None:
        self.items: deque[Item] = deque()
        self.maxsize = maxsize
        self.ready = threading.Event()
        self.full_waits = 0
        self.closed = False
        self.refused_closed = 0      # not taken after close: unacknowledged, redelivered

    def close(self) -> None:
        """Take nothing more (a waiting put returns): the gateway is stopping."""
        self.closed = True

    def discard(self) -> None:
        """Drop what a put slipped in after the last commit: it can no longer be
        acknowledged on its connection, so the broker redelivers it."""
        self.refused_closed += len(self.items)
        self.items.clear()

    def _wait_for_room(self) -> bool:
        while len(self.items) >= self.maxsize and not self.closed:
            self.full_waits += 1
            self.ready.set()
            time.sleep(0.001)
        return not self.closed

    def put(self, item: Item) -> None:
        if not self._wait_for_room():
            self.refused_closed += 1
            return
        self.items.append(item)
        if not self.ready.is_set():
            self.ready.set()

    def put_many(self, items: list[Item]) -> None:
        """Like ``put`` for one socket read: the bound may be passed by that one read."""
        if not self._wait_for_room():
            self.refused_closed += len(items)
            return
        self.items.extend(items)
        if not self.ready.is_set():
            self.ready.set()

    def take(self, cap: int, timeout: float, linger: float) -> list[Item]:
        """Up to ``cap`` items: wait ``timeout`` for the first, then ``linger`` for more."""
        items = self.items
        if not items:
            self.ready.clear()          # then look again: a put may have come between
            if not items:
                if timeout <= 0:
                    return []
                self.ready.wait(timeout)
                if not items:
                    return []
        if len(items) < cap and linger > 0:
            time.sleep(linger)
        pop = items.popleft
        n = min(cap, len(items))
        return [pop() for _ in range(n)]

    def __len__(self) -> int:
        return len(self.items)


def make_client(b: BrokerConfig, client_id: str, clean_session: bool,
                manual_ack: bool = False, fast: bool = False) -> mqtt.Client:
    cls = FastClient if fast else mqtt.Client
    c = cls(CallbackAPIVersion.VERSION2, client_id=client_id,
                    clean_session=clean_session, protocol=mqtt.MQTTv311, manual_ack=manual_ack)
    c.connect_timeout = b.connect_timeout_s
    if b.username:
        c.username_pw_set(b.username, b.password or None)
    if b.tls.enabled:
        c.tls_set(ca_certs=b.tls.ca_file or None, certfile=b.tls.cert_file or None,
                  keyfile=b.tls.key_file or None)
    return c


class LocalConnection:
    def __init__(self, cfg: LocalConfig, index: int, out: Feed) -> None:
        self.cfg = cfg
        self.index = index
        self.out = out
        cid = cfg.broker.client_id
        self.client = make_client(cfg.broker, cid, clean_session=False, manual_ack=True,
                                  fast=True)
        self.client.reconnect_delay_set(1, 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        if isinstance(self.client, FastClient):
            self.client.on_message_batch = self._on_message_batch
        self.client.on_subscribe = self._on_subscribe
        self.lock = threading.Lock()
        self.generation = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.received = 0
        self.stale_acks = 0          # acks skipped: their connection is gone

    def filters(self) -> list[str]:
        return list(self.cfg.subscriptions)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        if rc.is_failure:
            log.warning("local broker refused connection", extra={"rc": str(rc)})
            return
        with self.lock:
            self.generation += 1
        client.subscribe([(f, 1) for f in self.filters()])
        self.connected.set()
        log.info("local broker connected", extra={"conn": self.index,
                                                  "session_present": flags.session_present})

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any = None) -> None:
        with self.lock:
            self.generation += 1
        self.connected.clear()
        self.subscribed.clear()
        log.warning("local broker disconnected", extra={"conn": self.index, "rc": str(rc)})

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any,
                      props: Any = None) -> None:
        if any(rc.is_failure for rc in rcs):
            log.error("local broker refused a subscription", extra={"codes": str(rcs)})
            return
        self.subscribed.set()
        log.info("subscribed", extra={"conn": self.index, "filters": ",".join(self.filters())})

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        payload = msg.payload
        if len(payload) > OVERSIZE_KEEP:
            # refused as too_large anyway: keep only a sample, so that a flood of
            # huge messages cannot fill memory through the bounded (by count) feed
            payload = truncated(payload, OVERSIZE_KEEP)
        item: Item = (msg._topic if msg._topic else b"", payload, msg.mid, msg.qos,
                      time.time(), self, self.generation)
        self.out.put(item)

    def _on_message_batch(self, batch: list[Publish]) -> None:
        """Whole PUBLISH packets of one socket read (see fastpaho): one clock reading."""
        self.received += len(batch)
        t = time.time()
        gen = self.generation
        self.out.put_many([(topic, payload if len(payload) <= OVERSIZE_KEEP
                            else truncated(payload, OVERSIZE_KEEP), mid, qos, t, self, gen)
                           for topic, payload, mid, qos in batch])

    def ack_many(self, mids: list[int], generation: int) -> None:
        """Acknowledge QoS 1 messages received on connection ``generation``."""
        with self.lock:
            if generation != self.generation:
                self.stale_acks += len(mids)
                return
            client = self.client
            if isinstance(client, FastClient):
                client.ack_many(mids)
            else:
                for mid in mids:
                    client.ack(mid, 1)

    def start(self) -> None:
        b = self.cfg.broker
        self.client.connect_async(b.host, b.port, b.keepalive_s)
        self.client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly: the loop thread writes what is queued (the last
        PUBACKs) and then the DISCONNECT before it is stopped."""
        try:
            if isinstance(self.client, FastClient) and self.connected.is_set():
                self.client.round_trip(timeout)       # our last PUBACKs are processed
            self.client.disconnect()
            deadline = time.monotonic() + timeout
            while self.connected.is_set() and time.monotonic() < deadline:
                time.sleep(0.005)
        finally:
            self.client.loop_stop()
