"""Certificate bundles: a new TLS certificate and private key for a device,
sent by the receiver on ``ft/v1/{device_id}/cert`` (SPEC.md section 3.7).

Too large for an envelope, so a format of its own, authenticated and
numbered like a command (the receiver's (epoch, seq) command counter, checked
in the device's command window) and with the private key encrypted under
the device's HMAC key. Pure; runs on CPython and MicroPython.

    0    4   "FTC1"
    4    1   key id of the HMAC key that seals it
    5    4   u32 command epoch
    9    4   u32 command seq
    13   2   u16 certificate length C, then C bytes of certificate (DER)
    ..   2   u16 key length K, then K bytes of private key (DER) XOR keystream
    -16      tag = HMAC-SHA256(key, "FT1-cert" || u8 len(id) || id || all before)[:16]

keystream block i = HMAC-SHA256(key, "FT1-certkey" || u8 len(id) || id ||
                                u32 epoch || u32 seq || u32 i)
"""

import struct

from protocol.errors import (
    BAD_SIGNATURE, KEY_UNKNOWN, LENGTH_INVALID, TOO_LARGE, TRUNCATED, VERSION_UNSUPPORTED,
    AuthError, DecodeError,
)
from protocol.mac import TAG_LEN, equal

MAGIC = b"FTC1"
MAX_BUNDLE = 4096
_HEAD = 13


def _id(device_id):
    did = device_id.encode()
    return bytes((len(did),)) + did


def _keystream_xor(mac, device_id, epoch, seq, data):
    out = bytearray(len(data))
    did = _id(device_id)
    for i in range(0, len(data), 32):
        block = mac.full((b"FT1-certkey", did, struct.pack(">III", epoch, seq, i // 32)))
        for j in range(min(32, len(data) - i)):
            out[i + j] = data[i + j] ^ block[j]
    return bytes(out)


def seal(mac, key_id, device_id, epoch, seq, cert_der, key_der):
    """The bundle for ``device_id``, sealed with ``mac`` (its current key)."""
    body = (MAGIC + struct.pack(">BIIH", key_id, epoch, seq, len(cert_der)) + cert_der
            + struct.pack(">H", len(key_der))
            + _keystream_xor(mac, device_id, epoch, seq, key_der))
    if len(body) + TAG_LEN > MAX_BUNDLE:
        raise DecodeError(TOO_LARGE, "bundle %d bytes" % (len(body) + TAG_LEN))
    return body + mac.tag((b"FT1-cert", _id(device_id), body))


def open_bundle(macs, device_id, payload):
    """``(key id, epoch, seq, cert_der, key_der)`` of an authentic bundle.

    ``macs``: the device's usable keys by key id. Raises ProtocolError.
    Freshness (the command window) is the caller's: check, then act.
    """
    n = len(payload)
    if n > MAX_BUNDLE:
        raise DecodeError(TOO_LARGE, "%d bytes" % n)
    if n < _HEAD + 4 + TAG_LEN:
        raise DecodeError(TRUNCATED, "%d bytes" % n)
    if bytes(payload[:4]) != MAGIC:
        raise DecodeError(VERSION_UNSUPPORTED, "not a v1 certificate bundle")
    key_id, epoch, seq, clen = struct.unpack_from(">BIIH", payload, 4)
    kpos = _HEAD + 2 + clen
    if kpos + 2 > n - TAG_LEN:
        raise DecodeError(LENGTH_INVALID, "certificate length")
    (klen,) = struct.unpack_from(">H", payload, kpos)
    if kpos + 2 + klen != n - TAG_LEN:
        raise DecodeError(LENGTH_INVALID, "key length")
    mac = macs.get(key_id)
    if mac is None:
        raise AuthError(KEY_UNKNOWN, "key id %d" % key_id)
    body = memoryview(payload)[:n - TAG_LEN]
    if not equal(mac.tag((b"FT1-cert", _id(device_id), body)), payload[n - TAG_LEN:]):
        raise AuthError(BAD_SIGNATURE, "certificate bundle")
    cert = bytes(payload[_HEAD + 2:kpos])
    key = _keystream_xor(mac, device_id, epoch, seq, bytes(payload[kpos + 2:kpos + 2 + klen]))
    return key_id, epoch, seq, cert, key
