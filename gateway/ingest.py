"""The local-broker side: paho clients feeding the committer's bounded queue.

Each connection has a persistent session (clean_session false, fixed client
id) and ``manual_ack``: a QoS 1 message is acknowledged only when the
committer says its verdict is durable. If the gateway dies, the broker
redelivers whatever was not acknowledged. With ``connections > 1`` the
connections share one subscription (``$share/<group>/...``).

An acknowledgement is only sent on the connection (generation) that
received the message: after a reconnect the old message ids mean nothing,
and the broker redelivers those messages anyway (they become duplicates).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import BrokerConfig, LocalConfig

log = logging.getLogger("gateway.ingest")

# (topic, payload, mid, qos, received_at, connection, generation)
Item = tuple[str | bytes, bytes | bytearray, int, int, float, "LocalConnection", int]


def make_client(b: BrokerConfig, client_id: str, clean_session: bool,
                manual_ack: bool = False) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                    clean_session=clean_session, protocol=mqtt.MQTTv311, manual_ack=manual_ack)
    c.connect_timeout = b.connect_timeout_s
    if b.username:
        c.username_pw_set(b.username, b.password or None)
    if b.tls.enabled:
        c.tls_set(ca_certs=b.tls.ca_file or None, certfile=b.tls.cert_file or None,
                  keyfile=b.tls.key_file or None)
    return c


class LocalConnection:
    def __init__(self, cfg: LocalConfig, index: int, out: queue.Queue[Item],
                 put_timeout_s: float = 0.5) -> None:
        self.cfg = cfg
        self.index = index
        self.out = out
        self.put_timeout_s = put_timeout_s
        cid = cfg.broker.client_id if cfg.connections == 1 else "%s-%d" % (
            cfg.broker.client_id, index)
        self.client = make_client(cfg.broker, cid, clean_session=False, manual_ack=True)
        self.client.reconnect_delay_set(1, 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.lock = threading.Lock()
        self.generation = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.backpressure = 0        # times the committer queue was full
        self.received = 0
        self.stale_acks = 0          # acks skipped: their connection is gone

    def filters(self) -> list[str]:
        if self.cfg.connections == 1:
            return list(self.cfg.subscriptions)
        return ["$share/%s/%s" % (self.cfg.share_group, f) for f in self.cfg.subscriptions]

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
        item: Item = (msg._topic if msg._topic else b"", msg.payload, msg.mid, msg.qos,
                      time.time(), self, self.generation)
        while True:
            try:
                self.out.put(item, timeout=self.put_timeout_s)
                return
            except queue.Full:
                self.backpressure += 1  # bounded: the broker holds the rest (inflight limit)

    def ack(self, mid: int, qos: int, generation: int) -> None:
        with self.lock:
            if generation != self.generation:
                self.stale_acks += 1
                return
            self.client.ack(mid, qos)

    def start(self) -> None:
        b = self.cfg.broker
        self.client.connect_async(b.host, b.port, b.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
