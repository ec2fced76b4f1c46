"""A small non-blocking MQTT 3.1.1 client, stepped by ``poll(now_ms)``.

Why not micropython-lib's ``umqtt.simple``: its ``publish`` with QoS 1
blocks in a read loop until that message's PUBACK arrives, so one message
is in flight at a time (measured: 3 publishes took 130 ms on loopback; over
4G at 100+ ms RTT a 500-record backlog would take minutes), and a blocked
socket read stops the GNSS parser and the watchdog. Why not ``mqtt_as``:
it owns the network (it switches WLAN on and off itself) and needs uasyncio,
while our link is WLAN, PPP over a 4G modem, a host socket or a simulated
one, chosen by the board; and the fleet simulator steps thousands of
devices in one process without an event loop per device.

So this client never blocks: the board's transport is non-blocking (every
socket and TLS call of the board has its own timeout, see boards/base.py),
bytes go out through a preallocated tx buffer, bytes come in through a
preallocated rx buffer, and ``poll`` does bounded work. Several QoS 1
messages are in flight (``max_inflight``); PUBACKs are reported by packet
id to ``on_puback`` and the caller decides what an ack means (the outbox
drops the record). Keepalive: PINGREQ after ``keepalive`` of silence from
us; the connection is declared dead after 1.5 x keepalive of silence from
the broker. Anything the broker sends that is not valid MQTT (garbage,
oversize packets, unexpected types) closes the connection with a reason;
the caller reconnects with backoff.
"""

import struct

from firmware.app.compat import const, ticks_add, ticks_diff

IDLE = const(0)
OPENING = const(1)       # transport (TCP/TLS) being set up
CONNACK_WAIT = const(2)
CONNECTED = const(3)

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

TX_SIZE = const(2048)
RX_SIZE = const(1024)      # a certificate bundle (~600 bytes) fits; larger is skipped


class MqttClient:
    def __init__(self, client_id, keepalive_s=60, max_inflight=8, io_timeout_s=10):
        self.client_id = client_id.encode() if isinstance(client_id, str) else client_id
        self.keepalive_ms = keepalive_s * 1000
        self.keepalive_s = keepalive_s
        self.max_inflight = max_inflight
        self.io_timeout_ms = io_timeout_s * 1000
        self.state = IDLE
        self.transport = None
        self._tx = bytearray(TX_SIZE)
        self._tx_mv = memoryview(self._tx)
        self._tx_start = 0
        self._tx_end = 0
        self._rx = bytearray(RX_SIZE)
        self._rx_mv = memoryview(self._rx)
        self._rx_len = 0
        self._pid = 0
        self.inflight = {}          # packet id -> caller's tag
        self._deadline = 0
        self._last_tx = 0
        self._last_rx = 0
        self._ping_out = False
        self._will_topic = None
        self._will_payload = None
        self.close_reason = ""
        # counters
        self.bytes_out = 0
        self.bytes_in = 0
        self.protocol_errors = 0
        self.oversize = 0           # PUBLISH packets too large: acked and dropped
        self._skip = 0
        # callbacks, set by the owner
        self.on_connected = None     # ()
        self.on_puback = None        # (tag)
        self.on_message = None       # (topic memoryview, payload memoryview)
        self.on_closed = None        # (reason)

    # ---- connection ----

    def start(self, transport, now_ms, will_topic=None, will_payload=None):
        """Begin a session over a transport the board is opening."""
        self.transport = transport
        self.state = OPENING
        self._tx_start = self._tx_end = 0
        self._rx_len = 0
        self._skip = 0
        self.inflight = {}
        self._ping_out = False
        self._will_topic = will_topic
        self._will_payload = will_payload
        self._deadline = ticks_add(now_ms, self.io_timeout_ms)
        self._last_tx = now_ms          # stamps of a session long gone may have wrapped
        self._last_rx = now_ms
        self.close_reason = ""

    def close(self, reason):
        if self.state == IDLE:
            return
        self.state = IDLE
        self.close_reason = reason
        try:
            self.transport.close()
        except OSError:
            pass
        self.transport = None
        self.inflight = {}
        if self.on_closed:
            self.on_closed(reason)

    def disconnect(self):
        """Polite DISCONNECT (the broker then drops the last will)."""
        if self.state == CONNECTED and self._room(2):
            self._put2(_DISCONNECT, 0)
            self._write()
        self.close("disconnect")

    @property
    def connected(self):
        return self.state == CONNECTED

    def can_publish(self, n):
        return (self.state == CONNECTED and len(self.inflight) < self.max_inflight
                and self._room(n + 80))

    # ---- packets out ----

    def _room(self, n):
        if self._tx_start == self._tx_end:
            self._tx_start = self._tx_end = 0
        elif TX_SIZE - self._tx_end < n and self._tx_start:
            # compact: move the unsent bytes to the front
            k = self._tx_end - self._tx_start
            self._tx[0:k] = self._tx_mv[self._tx_start:self._tx_end]
            self._tx_start = 0
            self._tx_end = k
        return TX_SIZE - self._tx_end >= n

    def _put2(self, a, b):
        self._tx[self._tx_end] = a
        self._tx[self._tx_end + 1] = b
        self._tx_end += 2

    def _put_len(self, n):
        while True:
            b = n & 0x7F
            n >>= 7
            self._tx[self._tx_end] = b | 0x80 if n else b
            self._tx_end += 1
            if not n:
                return

    def _put_str(self, s):
        n = len(s)
        struct.pack_into(">H", self._tx, self._tx_end, n)
        self._tx[self._tx_end + 2:self._tx_end + 2 + n] = s
        self._tx_end += 2 + n

    def _send_connect(self):
        # Persistent session (clean session 0): the broker keeps the command
        # subscription and queues QoS 1 commands while the device is offline,
        # so a command sent to a device in a basement arrives when it is back.
        flags = 0x00
        n = 10 + 2 + len(self.client_id)
        if self._will_topic is not None:
            flags |= 0x04 | 0x08 | 0x20              # will, QoS 1, retained
            n += 4 + len(self._will_topic) + len(self._will_payload)
        self._tx[self._tx_end] = _CONNECT
        self._tx_end += 1
        self._put_len(n)
        self._put_str(b"MQTT")
        self._put2(4, flags)
        struct.pack_into(">H", self._tx, self._tx_end, self.keepalive_s)
        self._tx_end += 2
        self._put_str(self.client_id)
        if self._will_topic is not None:
            self._put_str(self._will_topic)
            self._put_str(self._will_payload)

    def _next_pid(self):
        for _ in range(8):
            self._pid = self._pid % 65535 + 1
            if self._pid not in self.inflight:
                return self._pid
        return 0

    def publish(self, topic, payload, n, tag=None, qos=1, retain=False):
        """Queue a PUBLISH of ``payload[:n]``; returns the packet id (or -1
        for QoS 0), 0 when it cannot be taken now (window or buffer full)."""
        if not self.can_publish(len(topic) + n):
            return 0
        pid = -1
        if qos:
            pid = self._next_pid()
            if not pid:
                return 0
        self._tx[self._tx_end] = _PUBLISH | (qos << 1) | (1 if retain else 0)
        self._tx_end += 1
        self._put_len(2 + len(topic) + (2 if qos else 0) + n)
        self._put_str(topic)
        if qos:
            struct.pack_into(">H", self._tx, self._tx_end, pid)
            self._tx_end += 2
            self.inflight[pid] = tag
        self._tx[self._tx_end:self._tx_end + n] = payload[:n]
        self._tx_end += n
        return pid

    def subscribe(self, topic, qos=1):
        if self.state != CONNECTED or not self._room(len(topic) + 10):
            return False
        pid = self._next_pid()
        self._tx[self._tx_end] = _SUBSCRIBE
        self._tx_end += 1
        self._put_len(2 + 2 + len(topic) + 1)
        struct.pack_into(">H", self._tx, self._tx_end, pid)
        self._tx_end += 2
        self._put_str(topic)
        self._tx[self._tx_end] = qos
        self._tx_end += 1
        return True

    # ---- the step ----

    def poll(self, now_ms):
        """Bounded work: finish opening, read, parse, write, keepalive."""
        if self.state == IDLE:
            return
        try:
            if self.state == OPENING:
                if not self.transport.ready():
                    if ticks_diff(now_ms, self._deadline) > 0:
                        self.close("connect timeout")
                    return
                self._send_connect()
                self.state = CONNACK_WAIT
                self._deadline = ticks_add(now_ms, self.io_timeout_ms)
                self._last_rx = now_ms
            self._read(now_ms)
            if self.state == IDLE:
                return
            if self.state == CONNACK_WAIT and ticks_diff(now_ms, self._deadline) > 0:
                self.close("connack timeout")
                return
            if self.state == CONNECTED:
                self._keepalive(now_ms)
            if self.state != IDLE:
                self._write(now_ms)
        except OSError as e:
            self.close("socket: %s" % e)

    def _keepalive(self, now_ms):
        if ticks_diff(now_ms, self._last_rx) > self.keepalive_ms * 3 // 2:
            self.close("keepalive timeout")
            return
        if (not self._ping_out and ticks_diff(now_ms, self._last_tx) >= self.keepalive_ms * 3 // 4
                and self._room(2)):
            self._put2(_PINGREQ, 0)
            self._ping_out = True

    def _write(self, now_ms=None):
        while self._tx_start < self._tx_end:
            k = self.transport.write(self._tx_mv[self._tx_start:self._tx_end])
            if not k:
                if self._tx_start and now_ms is not None and \
                        ticks_diff(now_ms, self._last_tx) > self.io_timeout_ms:
                    self.close("write timeout")
                return
            self._tx_start += k
            self.bytes_out += k
            if now_ms is not None:
                self._last_tx = now_ms
        self._tx_start = self._tx_end = 0

    def _read(self, now_ms):
        for _ in range(8):          # bounded: at most 8 reads per poll
            if self._rx_len >= RX_SIZE:
                self._fail("packet larger than %d bytes" % RX_SIZE)
                return
            k = self.transport.readinto(self._rx_mv[self._rx_len:])
            if not k:
                return
            self.bytes_in += k
            self._last_rx = now_ms
            if self._skip:
                # the tail of an oversize PUBLISH already acknowledged: drop it
                drop = min(k, self._skip)
                self._skip -= drop
                if drop == k:
                    continue
                rest = k - drop
                self._rx[self._rx_len:self._rx_len + rest] = \
                    self._rx_mv[self._rx_len + drop:self._rx_len + k]
                k = rest
            self._rx_len += k
            self._parse()
            if self.state == IDLE:
                return

    def _skip_oversize(self, start, off, total, avail):
        """A PUBLISH too large for the buffer: acknowledge it and drop its
        bytes, so that a persistent session does not redeliver it forever
        (a poison message). Anything else that large is garbage. Returns
        True once skipping started, False to wait for more header bytes."""
        rx = self._rx
        first = rx[start]
        qos = (first >> 1) & 3
        if first & 0xF0 != _PUBLISH or qos > 1:
            self._fail("packet of %d bytes" % total)
            return False
        need = off - start + 2
        tlen = 0
        if avail >= need:
            tlen = (rx[off] << 8) | rx[off + 1]
            if tlen == 0:
                self._fail("publish without a topic")
                return False
            need += tlen + (2 if qos else 0)
        if avail < need:
            if self._rx_len >= RX_SIZE:
                self._fail("publish header")
            return False            # wait for the topic and packet id
        if qos:
            p = off + 2 + tlen
            pid = (rx[p] << 8) | rx[p + 1]
            if self._room(4):
                self._put2(_PUBACK, 2)
                self._put2(pid >> 8, pid & 0xFF)
        self.oversize += 1
        self._skip = total - avail
        return True

    def _fail(self, reason):
        self.protocol_errors += 1
        self.close("broker sent garbage: " + reason)

    def _parse(self):
        rx = self._rx
        start = 0
        while self.state != IDLE:
            avail = self._rx_len - start
            if avail < 2:
                break
            rl = 0
            mult = 1
            i = start + 1
            while True:
                if i >= self._rx_len:
                    rl = -1
                    break
                b = rx[i]
                rl += (b & 0x7F) * mult
                i += 1
                if not b & 0x80:
                    break
                mult <<= 7
                if mult > 1 << 21:
                    self._fail("remaining length")
                    return
            if rl < 0:
                break
            total = i - start + rl
            if total > RX_SIZE:
                if self._skip_oversize(start, i, total, avail):
                    self._rx_len = 0        # what is buffered from start on is its
                    return
                if self.state == IDLE:
                    return
                break                       # wait for its topic and packet id
            if avail < total:
                break
            self._packet(rx[start], i, rl)
            start += total
        if start and self.state != IDLE:
            rest = self._rx_len - start
            rx[0:rest] = self._rx_mv[start:self._rx_len]
            self._rx_len = rest

    def _packet(self, first, off, rl):
        rx = self._rx
        ptype = first & 0xF0
        if self.state == CONNACK_WAIT:
            if ptype != _CONNACK or rl != 2:
                self._fail("expected CONNACK")
                return
            if rx[off + 1] != 0:
                self.close("connection refused, code %d" % rx[off + 1])
                return
            self.state = CONNECTED
            if self.on_connected:
                self.on_connected()
            return
        if ptype == _PUBACK and rl == 2:
            pid = (rx[off] << 8) | rx[off + 1]
            if pid in self.inflight:
                tag = self.inflight.pop(pid)
                if self.on_puback:
                    self.on_puback(tag)
        elif ptype == _PUBLISH:
            self._incoming(first, off, rl)
        elif ptype == _PINGRESP and rl == 0:
            self._ping_out = False
        elif ptype == _SUBACK and rl >= 3:
            if rx[off + 2] == 0x80:
                self.close("subscription refused")
        else:
            self._fail("packet type 0x%02x" % first)

    def _incoming(self, first, off, rl):
        qos = (first >> 1) & 3
        if qos > 1 or rl < 2:
            self._fail("publish qos %d" % qos)
            return
        tlen = (self._rx[off] << 8) | self._rx[off + 1]
        p = off + 2 + tlen
        end = off + rl
        if p + (2 if qos else 0) > end:
            self._fail("publish topic length")
            return
        topic = self._rx_mv[off + 2:p]
        if qos:
            pid = (self._rx[p] << 8) | self._rx[p + 1]
            p += 2
            if self._room(4):
                self._put2(_PUBACK, 2)
                self._put2(pid >> 8, pid & 0xFF)
        if self.on_message:
            self.on_message(topic, self._rx_mv[p:end])
