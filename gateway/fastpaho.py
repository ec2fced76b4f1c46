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
  supported on this client).

It relies on paho 2.x internals (``_create_socket``, ``_packet_read``,
``_packet_queue``); pyproject pins paho-mqtt < 3 and the gateway tests
exercise it end to end.
"""

from __future__ import annotations

import struct
from typing import Any

import paho.mqtt.client as mqtt

_PUBACK = struct.Struct("!BBH")
PUBACK = 0x40
READ_SIZE = 65536
MAX_PACKETS_PER_READ = 2000    # then let the loop write (acks, pings) again


class BufferedSocket:
    """Wraps a (possibly TLS) socket: large reads, served in the sizes paho asks for."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        if self._pos < len(self._buf):
            out = self._buf[self._pos:self._pos + n]
            self._pos += len(out)
            return out
        data: bytes = self._sock.recv(max(n, READ_SIZE))
        if len(data) <= n:
            return data
        self._buf, self._pos = data, n
        return data[:n]

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + int(inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class FastClient(mqtt.Client):
    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        for _ in range(MAX_PACKETS_PER_READ):
            if self._sock is None:
                return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:
                break
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
