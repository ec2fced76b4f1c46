"""fieldtrace wire protocol v1: pure codec, signing and verification.

The same files run on CPython >= 3.11 and MicroPython >= 1.22. See SPEC.md.
"""

from protocol.errors import ProtocolError, DecodeError, AuthError, FreshnessError  # noqa: F401
