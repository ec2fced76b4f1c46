"""Signing and tag checking.

The tag is HMAC-SHA256 truncated to 128 bits over

    b"FT1" || u8 len(device_id) || device_id (ASCII) || u8 topic kind || envelope[:-16]

Device id and topic kind are not in the payload but are bound by the MAC, so
a record cannot be replayed under another device's topic or another kind.
"""

import struct

from protocol.errors import BAD_SIGNATURE, AuthError
from protocol.mac import TAG_LEN, Mac, equal
from protocol.topics import check_device_id

DOMAIN = b"FT1"


_PREFIXES = {}
_PREFIX_CACHE_MAX = 16384   # bounded: cleared when full (a receiver sees ~3,000 devices)


def mac_prefix(device_id, topic_kind):
    """The MAC input's prefix; cached because a receiver computes it per message."""
    key = (device_id, topic_kind)
    p = _PREFIXES.get(key)
    if p is None:
        check_device_id(device_id)
        did = device_id.encode()
        p = DOMAIN + bytes((len(did),)) + did + bytes((topic_kind,))
        if len(_PREFIXES) >= _PREFIX_CACHE_MAX:
            _PREFIXES.clear()
        _PREFIXES[key] = p
    return p


class Signer:
    """Signs envelopes in place for one device, key and key id."""

    def __init__(self, device_id, key, key_id):
        if not 0 <= key_id <= 15:
            raise ValueError("key id must be 0..15")
        self.device_id = check_device_id(device_id)
        self.key_id = key_id
        self.mac = Mac(key)
        self._prefixes = {}

    def _prefix(self, topic_kind):
        p = self._prefixes.get(topic_kind)
        if p is None:
            p = mac_prefix(self.device_id, topic_kind)
            self._prefixes[topic_kind] = p
        return p

    def sign_into(self, buf, n, topic_kind):
        """Write the tag of ``buf[:n]`` at ``buf[n:n+16]``; returns n + 16."""
        tag = self.mac.tag((self._prefix(topic_kind), memoryview(buf)[:n]))
        buf[n:n + TAG_LEN] = tag
        return n + TAG_LEN

    def tag_of(self, signed_part, topic_kind):
        return self.mac.tag((self._prefix(topic_kind), signed_part))


def expected_tag(mac, device_id, topic_kind, signed_part):
    return mac.tag((mac_prefix(device_id, topic_kind), signed_part))


def check_tag(env, device_id, topic_kind, mac):
    """Raise AuthError(bad_signature) unless ``env`` was signed with ``mac``."""
    want = expected_tag(mac, device_id, topic_kind, env.signed_part)
    if not equal(want, env.tag):
        raise AuthError(BAD_SIGNATURE, "key id %d" % env.key_id)


def key_wrap_pad(mac, device_id, cmd_epoch, cmd_seq, new_key_id):
    """32-byte one-time pad for a rotate_key command.

    HMAC under the *current* key of a label, the device id and the command's
    own (epoch, seq), which never repeats: XOR with the new key gives a
    ciphertext only a holder of the current key can open, and the command's
    tag (same current key) authenticates it.
    """
    did = device_id.encode()
    return mac.full((b"FT1-wrap", bytes((len(did),)), did,
                     struct.pack(">IIB", cmd_epoch, cmd_seq, new_key_id)))


def xor32(a, b):
    out = bytearray(32)
    for i in range(32):
        out[i] = a[i] ^ b[i]
    return bytes(out)
