"""Device side of the TLS benchmark; runs on MicroPython (and CPython).

    micropython bench/tls_device_loop.py FLASH_DIR HOST PORT N [tls]

Connects with the firmware's own MqttClient over the firmware's TcpLink
(mutual TLS with the DER files in FLASH_DIR when ``tls`` is given), then
publishes N pre-signed 49-byte GPS records at QoS 1 with 8 in flight.
Prints one JSON line: connect_ms (TCP + TLS + CONNECT/CONNACK), the heap the
open connection holds (session_heap, after a collection: on the unix port
mbedTLS allocates from the MicroPython heap) and rate.
"""

import gc
import json
import sys

from firmware.app.compat import ticks_diff, ticks_ms
from firmware.app.mqtt import MqttClient
from firmware.boards.tcplink import TcpLink
from protocol import codec
from protocol.auth import Signer
from protocol.topics import KIND_GPS


class Tls:
    ca = "ca.der"
    cert = "cert.der"
    key = "key.der"
    server_hostname = "localhost"


class State:
    def __init__(self):
        self.up = False
        self.acked = 0

    def connected(self):
        self.up = True

    def puback(self, tag):
        self.acked += 1


def main(argv):
    flash, host, port, n = argv[0], argv[1], int(argv[2]), int(argv[3])
    tls = Tls() if len(argv) > 4 and argv[4] == "tls" else None
    did = "rec-0001"
    signer = Signer(did, bytes(32), 0)
    buf = bytearray(codec.MAX_ENVELOPE)
    topic = b"ft/v1/rec-0001/gps"
    st = State()
    c = MqttClient(did, 60, 8, 10)
    c.on_connected = st.connected
    c.on_puback = st.puback
    c.on_message = lambda t, p: None
    c.on_closed = lambda r: None
    link = TcpLink(flash)
    gc.collect()
    heap_before = gc.mem_alloc()
    t0 = ticks_ms()
    c.start(link.open(host, port, tls, 10000), t0)
    while not st.up:
        c.poll(ticks_ms())
        if ticks_diff(ticks_ms(), t0) > 15000:
            raise OSError("no CONNACK")
    connect_ms = ticks_diff(ticks_ms(), t0)
    gc.collect()
    session_heap = gc.mem_alloc() - heap_before   # socket, TLS context and session, MQTT
    t1 = ticks_ms()
    sent = 0
    flags = codec.make_flags(0)
    while st.acked < n:
        while sent < n and c.can_publish(80):
            off = codec.pack_header(buf, KIND_GPS, flags, 9, sent, 1764806400)
            off = codec.pack_position(buf, off, 359912345, 1194012345, 38, 142, 27350, 8, 2,
                                      14, 9, 0)
            m = signer.sign_into(buf, off, KIND_GPS)
            c.publish(topic, buf, m, sent)
            sent += 1
        c.poll(ticks_ms())
        if ticks_diff(ticks_ms(), t1) > 120000:
            break
    secs = ticks_diff(ticks_ms(), t1) / 1000
    print(json.dumps({"connect_ms": connect_ms, "session_heap": session_heap,
                      "records": st.acked,
                      "rate": st.acked / secs if secs else 0}))
    c.disconnect()


main(sys.argv[1:])
