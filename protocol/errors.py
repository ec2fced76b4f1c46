"""The one exception family of fieldtrace's wire protocol.

Every input that does not parse or verify raises ProtocolError (or a subclass)
carrying a machine-readable ``reason`` from the list below; gateways count
rejections by that reason and devices log it. Runs on CPython and MicroPython.
"""

# Structure (decoding)
TOO_LARGE = "too_large"
TRUNCATED = "truncated"
VERSION_UNSUPPORTED = "version_unsupported"
KIND_UNKNOWN = "kind_unknown"
FLAGS_RESERVED = "flags_reserved"
LENGTH_INVALID = "length_invalid"
FIELD_INVALID = "field_invalid"
# Addressing
TOPIC_INVALID = "topic_invalid"
DEVICE_ID_INVALID = "device_id_invalid"
KIND_MISMATCH = "kind_mismatch"
# Authentication
UNKNOWN_DEVICE = "unknown_device"
DEVICE_REVOKED = "device_revoked"
KEY_UNKNOWN = "key_unknown"
BAD_SIGNATURE = "bad_signature"
# Freshness
DUPLICATE = "duplicate"
REPLAYED = "replayed"
TIME_FUTURE = "time_future"
TIME_PAST = "time_past"

REASONS = (
    TOO_LARGE, TRUNCATED, VERSION_UNSUPPORTED, KIND_UNKNOWN, FLAGS_RESERVED,
    LENGTH_INVALID, FIELD_INVALID, TOPIC_INVALID, DEVICE_ID_INVALID,
    KIND_MISMATCH, UNKNOWN_DEVICE, DEVICE_REVOKED, KEY_UNKNOWN, BAD_SIGNATURE,
    DUPLICATE, REPLAYED, TIME_FUTURE, TIME_PAST,
)


class ProtocolError(ValueError):
    """An input that is not a valid fieldtrace message; ``reason`` says why."""

    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self):
        if self.detail:
            return self.reason + ": " + self.detail
        return self.reason


class DecodeError(ProtocolError):
    """The bytes or the topic are not a well-formed v1 message."""


class AuthError(ProtocolError):
    """Well formed, but not signed by a key this receiver accepts."""


class FreshnessError(ProtocolError):
    """Authentic, but a duplicate, a replay or outside the time limits."""
