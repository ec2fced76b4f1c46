"""The receiver's decision, pure: ``verify(...)`` returns a Verdict.

Order of checks (SPEC.md, "Verification"): size, topic, header, device
known and not revoked, key id, tag, body fields, replay window, time. The
tag is checked before the body fields and the window so that a forged
message is always counted as ``bad_signature`` and only an authentic repeat
can be a ``duplicate``.
"""

from protocol.auth import check_tag
from protocol.codec import decode_body, decode_header
from protocol.errors import (
    DEVICE_REVOKED, KEY_UNKNOWN, KIND_MISMATCH, TIME_FUTURE, TIME_PAST,
    TOO_LARGE, UNKNOWN_DEVICE, AuthError, DecodeError, FreshnessError,
    ProtocolError,
)
from protocol.mac import Mac
from protocol.replay import LANE_BY_KIND, ReplayWindow
from protocol.topics import parse_topic


class Limits:
    """What a receiver tolerates. Times are seconds."""

    def __init__(self, max_payload=128, max_future_s=300, max_past_s=30 * 86400):
        self.max_payload = max_payload
        self.max_future_s = max_future_s
        self.max_past_s = max_past_s


DEFAULT_LIMITS = Limits()


class DeviceKeys:
    """What the receiver knows of one device: its usable keys by key id."""

    def __init__(self, keys, revoked=False):
        self.revoked = revoked
        self.macs = {}
        for kid in keys:
            self.macs[kid] = Mac(keys[kid])


class Verdict:
    """``ok`` with the envelope and the window to store, or a ``reason``."""

    __slots__ = ("ok", "reason", "detail", "envelope", "device_id", "kind",
                 "lane", "window")

    def __init__(self, ok, reason=None, detail="", envelope=None,
                 device_id=None, kind=None, lane=None, window=None):
        self.ok = ok
        self.reason = reason
        self.detail = detail
        self.envelope = envelope
        self.device_id = device_id
        self.kind = kind
        self.lane = lane
        self.window = window

    def __repr__(self):
        if self.ok:
            return "Verdict(ok %s/%d.%d)" % (self.device_id, self.envelope.epoch,
                                              self.envelope.seq)
        return "Verdict(%s %s)" % (self.reason, self.detail)


def check_time(env, now, limits):
    if env.unsynced:
        return
    if env.ts > now + limits.max_future_s:
        raise FreshnessError(TIME_FUTURE, "%d s ahead" % (env.ts - now))
    if env.ts < now - limits.max_past_s:
        raise FreshnessError(TIME_PAST, "%d s old" % (now - env.ts))


def verify(topic, payload, lookup, window_of, now, limits=DEFAULT_LIMITS):
    """Decide on one message.

    ``lookup(device_id)`` returns DeviceKeys or None; ``window_of(device_id,
    lane)`` returns the lane's ReplayWindow or None. Neither is changed: an
    accepted verdict carries the new window for the caller to store once the
    record is durable.
    """
    device_id = None
    kind = None
    env = None
    try:
        if len(payload) > limits.max_payload:
            raise DecodeError(TOO_LARGE, "%d bytes" % len(payload))
        device_id, kind = parse_topic(topic)
        env = decode_header(payload)
        if env.kind != kind:
            raise DecodeError(KIND_MISMATCH, "envelope %d on topic %d" % (env.kind, kind))
        keys = lookup(device_id)
        if keys is None:
            raise AuthError(UNKNOWN_DEVICE, device_id)
        if keys.revoked:
            raise AuthError(DEVICE_REVOKED, device_id)
        mac = keys.macs.get(env.key_id)
        if mac is None:
            raise AuthError(KEY_UNKNOWN, "key id %d" % env.key_id)
        check_tag(env, device_id, kind, mac)
        decode_body(env)
        lane = LANE_BY_KIND[kind]
        window = window_of(device_id, lane) or ReplayWindow()
        window.check(env.epoch, env.seq)
        check_time(env, now, limits)
        return Verdict(True, envelope=env, device_id=device_id, kind=kind,
                       lane=lane, window=window.marked(env.epoch, env.seq))
    except ProtocolError as e:
        return Verdict(False, e.reason, e.detail, env, device_id, kind)
