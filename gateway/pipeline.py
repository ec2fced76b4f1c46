"""The gateway's pure decision: one MQTT message in, Accepted or Rejected out.

Wraps ``protocol.verify.verify`` with the gateway-level checks (size before
anything is decoded, topic length, downlink echoes) and builds the upstream
record (JSON text, ready to be stored and batched). No I/O, no clock: the
caller passes ``now`` and the key and window look-ups.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import Limits
from gateway.errors import PAYLOAD_TOO_LARGE, TOPIC_INVALID
from protocol.codec import POS_FIELDS
from protocol.replay import ReplayWindow
from protocol.topics import (
    KIND_ACK, KIND_ALARM, KIND_GPS, KIND_HB, KIND_STATUS, NAME_BY_KIND,
)
from protocol.verify import DeviceKeys
from protocol.verify import Limits as ProtocolLimits
from protocol.verify import verify

# Store / upstream lanes, in priority order.
LANE_ALARM = 0
LANE_STATUS = 1
LANE_TELEMETRY = 2
LANE_NAMES = ("alarm", "status", "telemetry")
UP_LANE_BY_KIND = {KIND_ALARM: LANE_ALARM, KIND_STATUS: LANE_STATUS, KIND_ACK: LANE_STATUS,
                   KIND_GPS: LANE_TELEMETRY, KIND_HB: LANE_TELEMETRY}

DUPLICATE = "duplicate"
DOWNLINK = "downlink_echo"     # our own command seen on the subscription: not a record
SAMPLE_BYTES = 512             # how much of a rejected payload the quarantine keeps

Lookup = Callable[[str], DeviceKeys | None]
WindowOf = Callable[[str, int], ReplayWindow | None]


class Accepted:
    """An accepted message (a plain slotted class: a frozen dataclass costs
    three times as much to build, once per record)."""

    __slots__ = ("device", "kind", "lane", "replay_lane", "window", "rec_id", "record",
                 "body", "ts", "key_id")

    def __init__(self, device: str, kind: int, lane: int, replay_lane: int,
                 window: ReplayWindow, rec_id: str, record: str, body: dict[str, Any],
                 ts: int, key_id: int = 0) -> None:
        self.device = device
        self.kind = kind
        self.lane = lane                  # store / upstream lane
        self.replay_lane = replay_lane    # protocol.replay.LANE_*
        self.window = window              # to store in the same transaction as the record
        self.rec_id = rec_id
        self.record = record              # upstream REC as compact JSON
        self.body = body
        self.ts = ts
        self.key_id = key_id


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str
    device: str | None
    topic: str
    sample: bytes

    @property
    def quarantined(self) -> bool:
        """Duplicates and our own downlink are normal traffic, not forensics."""
        return self.reason not in (DUPLICATE, DOWNLINK)


class Truncated(bytes):
    """The kept start of a payload too large to keep whole; remembers its size."""

    original_size: int = 0


def truncated(payload: bytes | bytearray, keep: int) -> Truncated:
    t = Truncated(payload[:keep])
    t.original_size = len(payload)
    return t


def protocol_limits(limits: Limits) -> ProtocolLimits:
    return ProtocolLimits(limits.max_payload, limits.max_future_s, limits.max_past_s)


def _topic_text(topic: str | bytes) -> str:
    if isinstance(topic, str):
        return topic[:128]
    return topic[:128].decode("utf-8", "replace")


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
# A GPS body (90 % of the traffic) is ten integers: formatted by name, what the
# encoder would write, at a third of its cost.
GPS_BODY_KEYS = POS_FIELDS
_GPS_BODY = "{" + ",".join('"%s":%%(%s)d' % (k, k) for k in GPS_BODY_KEYS) + "}"


def body_json(kind: int, body: dict[str, Any]) -> str:
    if kind == KIND_GPS and len(body) == len(GPS_BODY_KEYS):
        return _GPS_BODY % body
    return _encode(body)
_REC = ('{"id":"%s:%d:%d","device":"%s","kind":"%s","epoch":%d,"seq":%d,"ts":%d,"key_id":%d,'
        '"backlog":%s,"unsynced":%s,"received_at":%r,"body":%s,"envelope":"%s"}')
_BOOL = {False: "false", True: "true"}


def record_json(device: str, env: Any, payload: bytes | bytearray,
                received_at: float) -> tuple[str, str]:
    """(id, JSON) of the upstream record for an accepted envelope.

    Formatted by hand for speed: the device id is a checked ``[A-Za-z0-9_-]``
    string and every other field is a number, a bool or base64, so nothing
    needs escaping; the body goes through the JSON encoder.
    """
    rec_id = "%s:%d:%d" % (device, env.epoch, env.seq)
    return rec_id, _REC % (device, env.epoch, env.seq, device, NAME_BY_KIND[env.kind],
                           env.epoch, env.seq, env.ts, env.key_id, _BOOL[env.backlog],
                           _BOOL[env.unsynced], float(received_at), body_json(env.kind, env.body),
                           base64.b64encode(payload).decode("ascii"))


def decide(topic: str | bytes, payload: bytes | bytearray, lookup: Lookup, window_of: WindowOf,
           now: float, limits: Limits, plimits: ProtocolLimits,
           gateway_id: str) -> Accepted | Rejected:
    """Verify one message received at ``now`` (unix seconds)."""
    if len(payload) > limits.max_payload:
        size = payload.original_size if isinstance(payload, Truncated) else len(payload)
        return Rejected(PAYLOAD_TOO_LARGE, "%d bytes" % size, None, _topic_text(topic),
                        bytes(payload[:SAMPLE_BYTES]))
    if len(topic) > limits.max_topic:
        return Rejected(TOPIC_INVALID, "topic of %d bytes" % len(topic), None,
                        _topic_text(topic), bytes(payload[:SAMPLE_BYTES]))
    if (topic.endswith("/cmd") if isinstance(topic, str) else topic.endswith(b"/cmd")):
        return Rejected(DOWNLINK, "", None, _topic_text(topic), b"")
    v = verify(topic, payload, lookup, window_of, int(now), plimits)
    if not v.ok:
        return Rejected(v.reason or "invalid", v.detail, v.device_id, _topic_text(topic),
                        bytes(payload[:SAMPLE_BYTES]))
    env = v.envelope
    rec_id, rec = record_json(v.device_id, env, payload, now)
    return Accepted(v.device_id, v.kind, UP_LANE_BY_KIND[v.kind], v.lane, v.window, rec_id,
                    rec, env.body, env.ts, env.key_id)


def liveness_record(gateway_id: str, device: str, n: int, state: str, since: float,
                    reason: str) -> tuple[str, str]:
    rec_id = "liveness:%s:%s:%d" % (gateway_id, device, n)
    return rec_id, json.dumps({"id": rec_id, "kind": "liveness", "device": device,
                               "state": state, "since": since, "reason": reason},
                              separators=(",", ":"))


def batch_payload(gateway_id: str, records: list[str]) -> bytes:
    """An upstream message: ``{"gateway": id, "records": [REC, ...]}``."""
    return ('{"gateway":%s,"records":[%s]}' % (json.dumps(gateway_id),
                                               ",".join(records))).encode()
