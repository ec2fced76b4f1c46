"""HMAC-SHA256 truncated to 128 bits, on CPython and on MicroPython.

MicroPython has ``hashlib.sha256`` but no ``hmac``, so the RFC 2104
construction is built over it here; micropython-lib's ``hmac`` would also do,
but it defaults to MD5 and is one more file to ship, and this is ten lines.

On CPython the same construction runs from precomputed inner and outer
states (``sha256.copy()``): 0.7 µs a tag against 1.7 µs for
``hmac.digest``, and — what matters more in the gateway — it keeps the GIL,
where ``hmac.digest`` releases it for every message and the committer then
waits for the network thread to hand it back.
"""

import hashlib

TAG_LEN = 16
KEY_LEN = 32
_BLOCK = 64

try:
    import hmac as _std_hmac
except ImportError:  # MicroPython
    _std_hmac = None  # type: ignore[assignment]


_CAN_COPY = hasattr(hashlib.sha256(), "copy")   # CPython yes, MicroPython no


class Mac:
    """A keyed MAC for one device. ``tag(*parts)`` MACs the concatenation."""

    def __init__(self, key):
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
            raise ValueError("key must be 32 bytes")
        self._key = bytes(key)
        ipad = bytearray(_BLOCK)
        opad = bytearray(_BLOCK)
        for i in range(_BLOCK):
            k = self._key[i] if i < KEY_LEN else 0
            ipad[i] = k ^ 0x36
            opad[i] = k ^ 0x5C
        self._ipad = bytes(ipad)
        self._opad = bytes(opad)
        self._inner = None
        if _CAN_COPY:
            self._inner = hashlib.sha256(self._ipad)
            self._outer = hashlib.sha256(self._opad)

    def full(self, parts):
        """The full 32-byte HMAC-SHA256 of the concatenated ``parts``."""
        if self._inner is not None:
            inner = self._inner.copy()
            for p in parts:
                inner.update(p)
            outer = self._outer.copy()
            outer.update(inner.digest())
            return outer.digest()
        inner = hashlib.sha256(self._ipad)
        for p in parts:
            inner.update(p)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()

    def tag(self, parts):
        return self.full(parts)[:TAG_LEN]


def equal(a, b):
    """Constant-time comparison of two byte strings."""
    if _std_hmac is not None:
        return _std_hmac.compare_digest(bytes(a), bytes(b))
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0
