"""Inner loops of the protocol benchmark; runs on CPython and MicroPython.

    micropython bench/protocol_loop.py N      (MICROPYPATH=<repo root>)

Prints one JSON line: microseconds per encode+sign (device path: pack into a
preallocated buffer, sign in place) and per decode+verify (receiver path).
"""

import json
import sys
import time

from protocol import codec
from protocol.auth import Signer
from protocol.replay import ReplayWindow
from protocol.topics import KIND_GPS
from protocol.verify import DeviceKeys, verify

try:
    ticks_us = time.ticks_us
    ticks_diff = time.ticks_diff
except AttributeError:  # CPython
    def ticks_us():
        return time.perf_counter_ns() // 1000

    def ticks_diff(a, b):
        return a - b

KEY = bytes(range(32))
TOPIC = "ft/v1/rec-0001/gps"
NOW = 1764806400


def encode_loop(n, signer, buf):
    flags = codec.make_flags(1)
    t0 = ticks_us()
    for seq in range(n):
        off = codec.pack_header(buf, KIND_GPS, flags, 7, seq, NOW)
        off = codec.pack_position(buf, off, 359912345 + seq, 1194012345, 38, 142,
                                  27350, 8, 2, 14, 9, 0)
        signer.sign_into(buf, off, KIND_GPS)
    return ticks_diff(ticks_us(), t0) / n


def verify_loop(payloads):
    keys = DeviceKeys({1: KEY})
    window = [ReplayWindow()]

    def lookup(_d):
        return keys

    def window_of(_d, _l):
        return window[0]

    t0 = ticks_us()
    for p in payloads:
        v = verify(TOPIC, p, lookup, window_of, NOW)
        if not v.ok:
            raise RuntimeError(v.reason)
        window[0] = v.window
    return ticks_diff(ticks_us(), t0) / len(payloads)


def main(n):
    signer = Signer("rec-0001", KEY, 1)
    buf = bytearray(codec.MAX_ENVELOPE)
    enc = encode_loop(n, signer, buf)
    payloads = []
    for seq in range(n):
        off = codec.pack_header(buf, KIND_GPS, codec.make_flags(1), 7, seq, NOW)
        off = codec.pack_position(buf, off, 359912345, 1194012345, 38, 142, 27350, 8, 2, 14, 9, 0)
        payloads.append(bytes(buf[:signer.sign_into(buf, off, KIND_GPS)]))
    dec = verify_loop(payloads)
    print(json.dumps({"n": n, "encode_sign_us": enc, "decode_verify_us": dec,
                      "fix_bytes": len(payloads[0])}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
