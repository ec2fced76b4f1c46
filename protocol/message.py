"""Whole-message encoding from field dicts (the decoded form).

The device's hot path packs fields straight into its buffer with the
``codec.pack_*`` functions; this module is for everything else — commands
from the gateway, tools, tests and vectors — and guarantees that
``encode(..., decode(m).body) == m``.
"""

from protocol import codec
from binascii import hexlify, unhexlify

from protocol.auth import Signer, key_wrap_pad, xor32
from protocol.codec import (
    ACK_RESULTS, ALARM_CODES, CLASS_RECORDER, CMD_ACTION_CODES,
    CMD_PARAM_CODES, MAX_ENVELOPE, STATUS_STATES,
)
from protocol.errors import FIELD_INVALID, DecodeError
from protocol.topics import (
    KIND_ACK, KIND_ALARM, KIND_CMD, KIND_GPS, KIND_HB, KIND_STATUS,
)

_STATUS_CODES = {v: k for k, v in STATUS_STATES.items()}
_ACK_CODES = {v: k for k, v in ACK_RESULTS.items()}


def _position(buf, off, b):
    return codec.pack_position(
        buf, off, b["lat_e7"], b["lon_e7"], b["alt_m"], b["speed_cms"],
        b["course_cdeg"], b["hdop_x10"], b["fix"], b["sats"], b["gnss"],
        b["age_s"])


def pack_body(buf, off, kind, body):
    """Pack a decoded-form body dict; returns the next offset."""
    try:
        if kind == KIND_GPS:
            return _position(buf, off, body)
        if kind == KIND_ALARM:
            off = codec.pack_alarm_head(buf, off, ALARM_CODES[body["alarm"]],
                                        body["value"], body["has_position"])
            if body["has_position"]:
                return _position(buf, off, body)
            return codec.pack_no_position(buf, off)
        if kind == KIND_HB:
            return codec.pack_heartbeat(buf, off, body)
        if kind == KIND_STATUS:
            return codec.pack_status(buf, off, _STATUS_CODES[body["state"]],
                                     body["device_class"], body["hb_interval_s"])
        if kind == KIND_CMD:
            params = [(CMD_PARAM_CODES[k], v) for k, v in body["params"].items()]
            rotation = None
            if body["action"] == "rotate_key":
                rotation = (body["new_key_id"], codec.unhexlify(body["wrapped_key"]))
            return codec.pack_cmd(buf, off, CMD_ACTION_CODES[body["action"]], params,
                                  rotation)
        if kind == KIND_ACK:
            return codec.pack_ack(buf, off, body["cmd_epoch"], body["cmd_seq"],
                                  _ACK_CODES[body["result"]])
    except KeyError as e:
        raise DecodeError(FIELD_INVALID, "missing or unknown: %s" % e)
    raise DecodeError(FIELD_INVALID, "kind %d" % kind)


def encode(signer, kind, epoch, seq, ts, body, backlog=False, unsynced=False):
    """A signed envelope as bytes; ``signer`` is an auth.Signer."""
    buf = bytearray(MAX_ENVELOPE)
    flags = codec.make_flags(signer.key_id, backlog, unsynced)
    n = codec.pack_header(buf, kind, flags, epoch, seq, ts)
    n = pack_body(buf, n, kind, body)
    n = signer.sign_into(buf, n, kind)
    return bytes(buf[:n])


def encode_rotate_key(signer, epoch, seq, ts, new_key_id, new_key):
    """A rotate_key command carrying ``new_key`` wrapped under the signer's key."""
    pad = key_wrap_pad(signer.mac, signer.device_id, epoch, seq, new_key_id)
    body = {"action": "rotate_key", "params": {}, "new_key_id": new_key_id,
            "wrapped_key": hexlify(xor32(pad, new_key)).decode()}
    return encode(signer, KIND_CMD, epoch, seq, ts, body)


def unwrap_rotate_key(mac, device_id, env):
    """The new key inside an authenticated rotate_key command envelope."""
    pad = key_wrap_pad(mac, device_id, env.epoch, env.seq, env.body["new_key_id"])
    return xor32(pad, unhexlify(env.body["wrapped_key"]))


def sample_heartbeat(device_class=CLASS_RECORDER):
    """A plausible heartbeat body, for tools and tests."""
    hb = {"battery_pct": 87, "power": 0, "signal_dbm": -71, "outbox_depth": 0,
          "outbox_drops": 0, "free_heap": 41000, "reset_cause": 0,
          "uptime_s": 3600, "fw_major": 1, "fw_minor": 0, "fw_patch": 0,
          "hb_interval_s": 60, "device_class": device_class}
    if device_class == CLASS_RECORDER:
        hb["recording"] = False
        hb["storage_free_mib"] = 30000
    else:
        hb["strap"] = 0
    return hb


__all__ = ["encode", "encode_rotate_key", "unwrap_rotate_key", "pack_body", "Signer",
           "sample_heartbeat"]
