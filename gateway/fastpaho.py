"""A paho ``Client`` with the two costs of high-rate ingest removed.

paho 2.x reads one packet per ``select()`` and each packet with three
``recv`` calls, and every ``ack()`` is one packet, one socket write and one
wake-up of the loop thread. At 10,000+ messages/s those syscalls were most of
the ingest thread's time (see bench/README.md). This subclass:

- reads the socket 64 KiB at a time through a small buffer (``pending()``
  tells paho's loop that bytes are waiting, as it already does for TLS), and
  processes every buffered packet in one ``loop_read``;
- acknowledges a whole group commit with one write (``ack_many``): the
  PUBACKs are concatenated into one queued packet;
- hands each message straight to ``on_message`` (no per-topic callback
  matching, which decodes the topic twice; ``message_callback_add`` is not
  supported on this client);
- with ``on_message_batch`` set, splits every whole QoS 0/1 PUBLISH already
  in the read buffer itself (``split_publishes``, pure) and hands them over
  as one list of ``(topic, payload, mid, qos)``: no ``MQTTMessage``, no
  per-packet log formatting, no three-``recv`` state machine. paho's own
  path (``_packet_read``) still reads everything else: CONNACK, SUBACK,
  PINGRESP, QoS 2, a packet cut by the end of the buffer, and anything
  malformed, which it reports as a protocol error as before.

It relies on paho 2.x internals (``_create_socket``, ``_packet_read``,
``_packet_queue``); pyproject pins paho-mqtt < 3 and the gateway tests
exercise it end to end.
"""

from __future__ import annotations

import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

_PUBACK = struct.Struct("!BBH")
PUBACK = 0x40
READ_SIZE = 65536
MAX_PACKETS_PER_READ = 2000    # then let the loop write (acks, pings) again


Publish = tuple[bytes, bytes, int, int]     # topic, payload, mid (0 for QoS 0), qos


def split_publishes(buf: bytes, pos: int, limit: int) -> tuple[list[Publish], int]:
    """The whole QoS 0/1 MQTT 3.1.1 PUBLISH packets in ``buf`` from ``pos``.

    Returns them (at most ``limit``) and the offset of the first byte not
    consumed: the end, or the start of a packet that is not a QoS 0/1
    PUBLISH, is cut short, or is malformed (paho's reader then takes it).
    """
    out: list[Publish] = []
    end = len(buf)
    while pos + 2 <= end and len(out) < limit:
        cmd = buf[pos]
        if cmd & 0xF0 != 0x30:
            break
        qos = (cmd >> 1) & 3
        if qos > 1:
            break
        i = pos + 1
        length = 0
        shift = 0
        while True:
            if i >= end or shift > 21:
                return out, pos
            b = buf[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        stop = i + length
        if stop > end or length < 2:
            break
        tlen = (buf[i] << 8) | buf[i + 1]
        if tlen == 0:           # malformed in MQTT 3.1.1: paho reports it
            break
        body = i + 2 + tlen
        if qos:
            if body + 2 > stop:
                break
            mid = (buf[body] << 8) | buf[body + 1]
            out.append((buf[i + 2:body], buf[body + 2:stop], mid, 1))
        else:
            if body > stop:
                break
            out.append((buf[i + 2:body], buf[body:stop], 0, 0))
        pos = stop
    return out, pos


class BufferedSocket:
    """Wraps a (possibly TLS) socket: large reads, served in the sizes paho asks for."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        if self._pos < len(self._buf):
            out = self._buf[self._pos:self._pos + n]
            self._pos += len(out)
            return out
        data: bytes = self._sock.recv(max(n, READ_SIZE))
        if self._tls and data:
            data = self._more_tls_records(data)
        if len(data) <= n:
            return data
        self._buf, self._pos = data, n
        return data[:n]

    def _more_tls_records(self, first: bytes) -> bytes:
        """A TLS socket returns one record per ``recv``, and mosquitto writes one
        record per packet: keep reading while records are already there, so that
        a whole run of packets is in the buffer for ``split_publishes``."""
        parts = [first]
        size = len(first)
        while size < READ_SIZE:
            try:
                more = self._sock.recv(READ_SIZE - size)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            if not more:
                break           # closed: the next recv reports it to paho
            parts.append(more)
            size += len(more)
        return b"".join(parts)

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + int(inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class FastClient(mqtt.Client):
    # called with a list of Publish from the loop thread; None: paho's on_message
    on_message_batch: Callable[[list[Publish]], None] | None = None
    pingresps = 0

    def _handle_pingresp(self) -> mqtt.MQTTErrorCode:
        self.pingresps += 1
        return super()._handle_pingresp()

    def round_trip(self, timeout: float) -> bool:
        """Send a PINGREQ and wait for its PINGRESP: the broker handles a
        client's packets in order, so everything written before (PUBACKs) has
        then been processed. Needed before a DISCONNECT: paho closes the socket
        right after it, and a broker still sending to us then sees the reset
        and may drop the connection before it reads our last PUBACKs (mosquitto
        did: the next session got those messages again)."""
        wanted = self.pingresps + 1 + (1 if self._ping_t else 0)   # a keepalive ping out
        if self._send_pingreq() != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        deadline = time.monotonic() + timeout
        while self.pingresps < wanted:
            if time.monotonic() > deadline or self._sock is None:
                return False
            time.sleep(0.002)
        return True

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def _read_buffered_publishes(self, limit: int) -> int:
        """Hand over up to ``limit`` whole PUBLISH packets from the buffer; their count."""
        sock = self._sock
        on_batch = self.on_message_batch
        if on_batch is None or not isinstance(sock, BufferedSocket):
            return 0
        if self._in_packet["command"] != 0:      # paho is inside a packet
            return 0
        batch, sock._pos = split_publishes(sock._buf, sock._pos, limit)
        if batch:
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
            with self._in_callback_mutex:
                try:
                    on_batch(batch)
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message_batch: %s",
                                   err)
                    if not self.suppress_exceptions:
                        raise
        return len(batch)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """Read up to MAX_PACKETS_PER_READ packets, then let the loop write
        (PUBACKs, PINGREQ) again, however fast packets keep coming."""
        budget = MAX_PACKETS_PER_READ
        while budget > 0:
            if self._sock is None:
                return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:
                break
            budget -= 1 + self._read_buffered_publishes(budget - 1)
            pending = getattr(self._sock, "pending", None)
            if pending is not None and not pending():
                break
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK every QoS 1 message id in ``mids`` with one queued write."""
        if mids:
            self._packet_queue(PUBACK, b"".join([_PUBACK.pack(PUBACK, 2, m) for m in mids]),
                               0, 0)
