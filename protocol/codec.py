"""Binary envelope v1: pack into preallocated buffers, unpack with checks.

Layout (big-endian), see SPEC.md:

    0   u8   version << 4 | kind
    1   u8   flags: key id (bits 0-3), backlog (4), clock unsynced (5)
    2   u32  boot epoch
    6   u32  sequence number
    10  u32  timestamp, Unix seconds
    14  ...  body, fixed layout per kind
    -16      tag: HMAC-SHA256(key, mac input)[:16]

Pure: no I/O. Runs unchanged on CPython and MicroPython (no dataclasses, no
typing, struct.pack_into into caller-owned bytearrays on the device path).
"""

import struct
from binascii import hexlify, unhexlify  # noqa: F401  (unhexlify is used by message.py)

from protocol.errors import (
    FIELD_INVALID, FLAGS_RESERVED, KIND_UNKNOWN, LENGTH_INVALID, TOO_LARGE,
    TRUNCATED, VERSION_UNSUPPORTED, DecodeError,
)
from protocol.mac import TAG_LEN
from protocol.topics import (
    KIND_ACK, KIND_ALARM, KIND_CMD, KIND_GPS, KIND_HB, KIND_STATUS,
)

VERSION = 1
HEADER_LEN = 14
MAX_ENVELOPE = 128
MIN_ENVELOPE = HEADER_LEN + TAG_LEN

FLAG_KEY_MASK = 0x0F
FLAG_BACKLOG = 0x10
FLAG_UNSYNCED = 0x20
FLAG_RESERVED = 0xC0

_HEADER = ">BBIII"

# GPS fix, 19 bytes; also the position part of an alarm.
_POS = ">iihHHBBBH"
POS_LEN = 19
POS_FIELDS = ("lat_e7", "lon_e7", "alt_m", "speed_cms", "course_cdeg",
              "hdop_x10", "fix", "sats", "gnss", "age_s")
FIX_NONE = 0
FIX_2D = 1
FIX_3D = 2
FIX_DIFF = 3
GNSS_GPS = 0x01
GNSS_GLONASS = 0x02
GNSS_GALILEO = 0x04
GNSS_BEIDOU = 0x08
GNSS_QZSS = 0x10
GNSS_NAVIC = 0x20
HDOP_UNKNOWN = 255

# Alarm: type, info (bit 0: position valid), value, position.
_ALARM = ">BBH"
ALARM_LEN = 4 + POS_LEN
ALARM_TYPES = {
    1: "sos", 2: "strap_cut", 3: "tamper", 4: "low_battery", 5: "power_off",
    6: "recording_started", 7: "recording_stopped", 8: "low_storage",
    9: "alarm_cleared",
}
ALARM_CODES = {v: k for k, v in ALARM_TYPES.items()}

# Heartbeat: common part then per device class.
_HB = ">BBbHIIBIBBBHB"
HB_COMMON_LEN = 24
HB_FIELDS = ("battery_pct", "power", "signal_dbm", "outbox_depth",
             "outbox_drops", "free_heap", "reset_cause", "uptime_s",
             "fw_major", "fw_minor", "fw_patch", "hb_interval_s",
             "device_class")
CLASS_RECORDER = 1
CLASS_WRISTBAND = 2
_HB_RECORDER = ">BI"   # recording (0/1), free storage MiB
_HB_WRISTBAND = ">B"   # strap: 0 closed, 1 open/cut, 2 tamper
POWER_CHARGING = 0x01
POWER_EXTERNAL = 0x02
RESET_CAUSES = {0: "power_on", 1: "hard", 2: "watchdog", 3: "deep_sleep",
                4: "soft", 5: "brownout", 255: "unknown"}
STRAP_STATES = {0: "closed", 1: "open", 2: "tamper"}

_STATUS = ">BBH"       # state, device class, heartbeat interval
STATUS_LEN = 4
STATUS_STATES = {0: "offline", 1: "online", 2: "shutdown"}

# Command: action, parameter count, then (parameter id u8, value u32) pairs.
CMD_ACTIONS = {1: "set_params", 2: "locate_now", 3: "reboot",
               4: "clear_alarm", 5: "rotate_key"}
CMD_ROTATE_KEY = 5
ROTATE_LEN = 2 + 1 + 32   # action, 0 params, new key id, wrapped key
CMD_ACTION_CODES = {v: k for k, v in CMD_ACTIONS.items()}
CMD_PARAMS = {1: "gps_period_s", 2: "min_distance_m", 3: "min_heading_deg",
              4: "stationary_period_s", 5: "hb_interval_s",
              6: "alarm_period_s"}
CMD_PARAM_CODES = {v: k for k, v in CMD_PARAMS.items()}
CMD_MAX_PARAMS = 8

_ACK = ">IIB"          # command epoch, command seq, result
ACK_LEN = 9
ACK_RESULTS = {0: "ok", 1: "bad_args", 2: "unsupported", 3: "failed"}


def _clamp(v, lo, hi):
    v = int(v)
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


def _invalid(what):
    raise DecodeError(FIELD_INVALID, what)


# ---- packing (device side: caller-owned buffer, returns the next offset) ----

def pack_header(buf, kind, flags, epoch, seq, ts):
    struct.pack_into(_HEADER, buf, 0, (VERSION << 4) | kind, flags,
                     epoch, seq, ts)
    return HEADER_LEN


def make_flags(key_id, backlog=False, unsynced=False):
    f = key_id & FLAG_KEY_MASK
    if backlog:
        f |= FLAG_BACKLOG
    if unsynced:
        f |= FLAG_UNSYNCED
    return f


def pack_position(buf, off, lat_e7, lon_e7, alt_m, speed_cms, course_cdeg,
                  hdop_x10, fix, sats, gnss, age_s):
    """Pack a fix; out-of-range measurements saturate, bad coordinates raise."""
    if not (-900000000 <= lat_e7 <= 900000000
            and -1800000000 <= lon_e7 <= 1800000000):
        _invalid("coordinates")
    if not (FIX_2D <= fix <= FIX_DIFF) or gnss & 0xC0:
        _invalid("fix or gnss")
    struct.pack_into(_POS, buf, off, lat_e7, lon_e7,
                     _clamp(alt_m, -32768, 32767), _clamp(speed_cms, 0, 65535),
                     _clamp(course_cdeg, 0, 35999) if course_cdeg >= 0 else 0,
                     _clamp(hdop_x10, 0, 255), (fix << 6) | _clamp(sats, 0, 63),
                     gnss, _clamp(age_s, 0, 65535))
    return off + POS_LEN


def pack_no_position(buf, off):
    for i in range(off, off + POS_LEN):
        buf[i] = 0
    return off + POS_LEN


def pack_alarm_head(buf, off, alarm_type, value, has_position):
    if alarm_type not in ALARM_TYPES:
        _invalid("alarm type")
    struct.pack_into(_ALARM, buf, off, alarm_type, 1 if has_position else 0,
                     _clamp(value, 0, 65535))
    return off + 4


def pack_heartbeat(buf, off, hb):
    """``hb`` is a dict with HB_FIELDS and the class fields."""
    struct.pack_into(
        _HB, buf, off, _clamp(hb["battery_pct"], 0, 255), hb["power"] & 3,
        _clamp(hb["signal_dbm"], -128, 127), _clamp(hb["outbox_depth"], 0, 65535),
        _clamp(hb["outbox_drops"], 0, 0xFFFFFFFF),
        _clamp(hb["free_heap"], 0, 0xFFFFFFFF), hb["reset_cause"],
        _clamp(hb["uptime_s"], 0, 0xFFFFFFFF), hb["fw_major"], hb["fw_minor"],
        hb["fw_patch"], _clamp(hb["hb_interval_s"], 1, 65535), hb["device_class"])
    off += HB_COMMON_LEN
    if hb["device_class"] == CLASS_RECORDER:
        struct.pack_into(_HB_RECORDER, buf, off, 1 if hb["recording"] else 0,
                         _clamp(hb["storage_free_mib"], 0, 0xFFFFFFFF))
        return off + 5
    if hb["device_class"] == CLASS_WRISTBAND:
        struct.pack_into(_HB_WRISTBAND, buf, off, hb["strap"])
        return off + 1
    _invalid("device class")


def pack_status(buf, off, state, device_class, hb_interval_s):
    struct.pack_into(_STATUS, buf, off, state, device_class,
                     _clamp(hb_interval_s, 1, 65535))
    return off + STATUS_LEN


def pack_cmd(buf, off, action, params, rotation=None):
    """``params``: sequence of (param code, value) pairs; ``rotation``:
    (new key id, 32-byte wrapped key) for rotate_key and nothing else."""
    if action not in CMD_ACTIONS or len(params) > CMD_MAX_PARAMS:
        _invalid("command")
    if (action == CMD_ROTATE_KEY) != (rotation is not None):
        _invalid("rotation data goes with rotate_key only")
    if rotation is not None:
        new_kid, wrapped = rotation
        if params or not 0 <= new_kid <= 15 or len(wrapped) != 32:
            _invalid("rotate_key")
        struct.pack_into(">BBB", buf, off, action, 0, new_kid)
        buf[off + 3:off + ROTATE_LEN] = wrapped
        return off + ROTATE_LEN
    struct.pack_into(">BB", buf, off, action, len(params))
    off += 2
    for code, value in params:
        if code not in CMD_PARAMS:
            _invalid("command parameter")
        struct.pack_into(">BI", buf, off, code, value)
        off += 5
    return off


def pack_ack(buf, off, cmd_epoch, cmd_seq, result):
    struct.pack_into(_ACK, buf, off, cmd_epoch, cmd_seq, result)
    return off + ACK_LEN


# ---- unpacking ----

def _unpack_position(mv, off, out):
    vals = struct.unpack_from(_POS, mv, off)
    for i in range(6):
        out[POS_FIELDS[i]] = vals[i]
    out["fix"] = vals[6] >> 6
    out["sats"] = vals[6] & 0x3F
    out["gnss"] = vals[7]
    out["age_s"] = vals[8]
    if not (-900000000 <= vals[0] <= 900000000):
        _invalid("latitude")
    if not (-1800000000 <= vals[1] <= 1800000000):
        _invalid("longitude")
    if vals[4] > 35999:
        _invalid("course")
    if vals[7] & 0xC0:
        _invalid("gnss reserved bits")
    if out["fix"] == FIX_NONE:
        _invalid("fix type none")


def _body_gps(mv, n):
    if n != POS_LEN:
        raise DecodeError(LENGTH_INVALID, "gps body %d" % n)
    out = {}  # type: dict
    _unpack_position(mv, HEADER_LEN, out)
    return out


def _body_alarm(mv, n):
    if n != ALARM_LEN:
        raise DecodeError(LENGTH_INVALID, "alarm body %d" % n)
    atype, info, value = struct.unpack_from(_ALARM, mv, HEADER_LEN)
    if atype not in ALARM_TYPES:
        _invalid("alarm type")
    if info & 0xFE:
        _invalid("alarm info reserved bits")
    out = {"alarm": ALARM_TYPES[atype], "value": value,
           "has_position": bool(info & 1)}
    off = HEADER_LEN + 4
    if info & 1:
        _unpack_position(mv, off, out)
    else:
        for i in range(off, off + POS_LEN):
            if mv[i]:
                _invalid("position bytes without position")
    return out


def _body_hb(mv, n):
    if n < HB_COMMON_LEN:
        raise DecodeError(LENGTH_INVALID, "heartbeat body %d" % n)
    vals = struct.unpack_from(_HB, mv, HEADER_LEN)
    out = {}
    for i in range(len(HB_FIELDS)):
        out[HB_FIELDS[i]] = vals[i]
    if out["battery_pct"] > 100 and out["battery_pct"] != 255:
        _invalid("battery")
    if out["power"] & 0xFC:
        _invalid("power reserved bits")
    if out["reset_cause"] not in RESET_CAUSES:
        _invalid("reset cause")
    if out["hb_interval_s"] == 0:
        _invalid("heartbeat interval")
    off = HEADER_LEN + HB_COMMON_LEN
    cls = out["device_class"]
    if cls == CLASS_RECORDER:
        if n != HB_COMMON_LEN + 5:
            raise DecodeError(LENGTH_INVALID, "recorder heartbeat %d" % n)
        rec, free = struct.unpack_from(_HB_RECORDER, mv, off)
        if rec > 1:
            _invalid("recording state")
        out["recording"] = bool(rec)
        out["storage_free_mib"] = free
    elif cls == CLASS_WRISTBAND:
        if n != HB_COMMON_LEN + 1:
            raise DecodeError(LENGTH_INVALID, "wristband heartbeat %d" % n)
        strap = mv[off]
        if strap not in STRAP_STATES:
            _invalid("strap state")
        out["strap"] = strap
    else:
        _invalid("device class")
    return out


def _body_status(mv, n):
    if n != STATUS_LEN:
        raise DecodeError(LENGTH_INVALID, "status body %d" % n)
    state, cls, hb = struct.unpack_from(_STATUS, mv, HEADER_LEN)
    if state not in STATUS_STATES or cls not in (CLASS_RECORDER, CLASS_WRISTBAND) or hb == 0:
        _invalid("status")
    return {"state": STATUS_STATES[state], "device_class": cls,
            "hb_interval_s": hb}


def _body_cmd(mv, n):
    if n < 2:
        raise DecodeError(LENGTH_INVALID, "command body %d" % n)
    action, count = struct.unpack_from(">BB", mv, HEADER_LEN)
    if action not in CMD_ACTIONS:
        _invalid("command action")
    if action == CMD_ROTATE_KEY:
        if count != 0 or n != ROTATE_LEN:
            raise DecodeError(LENGTH_INVALID, "rotate_key body %d" % n)
        new_kid = mv[HEADER_LEN + 2]
        if new_kid > 15:
            _invalid("new key id")
        return {"action": "rotate_key", "params": {}, "new_key_id": new_kid,
                "wrapped_key": hexlify(bytes(mv[HEADER_LEN + 3:HEADER_LEN + ROTATE_LEN])).decode()}
    if count > CMD_MAX_PARAMS or n != 2 + 5 * count:
        raise DecodeError(LENGTH_INVALID, "command parameters")
    params = {}
    off = HEADER_LEN + 2
    for _ in range(count):
        code, value = struct.unpack_from(">BI", mv, off)
        off += 5
        name = CMD_PARAMS.get(code)
        if name is None or name in params:
            _invalid("command parameter")
        params[name] = value
    if params and action != CMD_ACTION_CODES["set_params"]:
        _invalid("parameters for an action without any")
    return {"action": CMD_ACTIONS[action], "params": params}


def _body_ack(mv, n):
    if n != ACK_LEN:
        raise DecodeError(LENGTH_INVALID, "ack body %d" % n)
    ce, cs, result = struct.unpack_from(_ACK, mv, HEADER_LEN)
    if result not in ACK_RESULTS:
        _invalid("ack result")
    return {"cmd_epoch": ce, "cmd_seq": cs, "result": ACK_RESULTS[result]}


_BODY_DECODERS = {
    KIND_GPS: _body_gps, KIND_HB: _body_hb, KIND_ALARM: _body_alarm,
    KIND_STATUS: _body_status, KIND_CMD: _body_cmd, KIND_ACK: _body_ack,
}


class Envelope:
    """A structurally valid v1 envelope. The tag is NOT checked here."""

    def __init__(self, raw, kind, flags, epoch, seq, ts):
        self.raw = raw
        self.version = VERSION
        self.kind = kind
        self.flags = flags
        self.key_id = flags & FLAG_KEY_MASK
        self.backlog = bool(flags & FLAG_BACKLOG)
        self.unsynced = bool(flags & FLAG_UNSYNCED)
        self.epoch = epoch
        self.seq = seq
        self.ts = ts
        self.body = None

    @property
    def signed_part(self):
        return memoryview(self.raw)[:len(self.raw) - TAG_LEN]

    @property
    def tag(self):
        return self.raw[len(self.raw) - TAG_LEN:]

    def fields(self):
        """Every field as a plain dict (JSON-ready)."""
        return {"version": self.version, "kind": self.kind,
                "key_id": self.key_id, "backlog": self.backlog,
                "unsynced": self.unsynced, "epoch": self.epoch,
                "seq": self.seq, "ts": self.ts, "body": self.body}


def decode_header(payload):
    """Check size, version, kind and flags; returns an Envelope without body."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise DecodeError(TRUNCATED, "payload is not bytes")
    n = len(payload)
    if n > MAX_ENVELOPE:
        raise DecodeError(TOO_LARGE, "%d bytes" % n)
    if n < 1:
        raise DecodeError(TRUNCATED, "empty")
    version = payload[0] >> 4
    if version != VERSION:
        raise DecodeError(VERSION_UNSUPPORTED, str(version))
    if n < MIN_ENVELOPE:
        raise DecodeError(TRUNCATED, "%d bytes" % n)
    vk, flags, epoch, seq, ts = struct.unpack_from(_HEADER, payload, 0)
    kind = vk & 0x0F
    if kind not in _BODY_DECODERS:
        raise DecodeError(KIND_UNKNOWN, str(kind))
    if flags & FLAG_RESERVED:
        raise DecodeError(FLAGS_RESERVED, hex(flags))
    return Envelope(bytes(payload), kind, flags, epoch, seq, ts)


def decode_body(env):
    n = len(env.raw) - MIN_ENVELOPE
    env.body = _BODY_DECODERS[env.kind](memoryview(env.raw), n)
    return env


def decode(payload):
    """Header and body of ``payload``; raises DecodeError. Tag not checked."""
    return decode_body(decode_header(payload))
