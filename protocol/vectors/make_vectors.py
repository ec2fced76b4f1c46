"""Regenerate protocol/vectors/*.json (deterministic: fixed keys, ids, times).

    python -m protocol.vectors.make_vectors

Each vector: topic, payload (hex), the receiver's clock ``now``, optional saved
window states, and the expected verdict — ``ok`` with every decoded field, or
the rejection ``reason``. Keys and devices are listed once per file.
"""

import json
from pathlib import Path

from protocol import codec, message
from protocol.auth import Signer
from protocol.codec import CLASS_RECORDER, CLASS_WRISTBAND
from protocol.replay import LANE_TELEMETRY, ReplayWindow
from protocol.topics import (
    KIND_ACK, KIND_ALARM, KIND_CMD, KIND_GPS, KIND_HB, KIND_STATUS, topic_for,
)

HERE = Path(__file__).resolve().parent
NOW = 1764806400  # 2025-12-04T00:00:00Z
KEY_A1 = bytes(range(32))
KEY_A2 = bytes(range(32, 64))
KEY_B = bytes(range(64, 96))
KEY_C = bytes(range(96, 128))
DEVICES = {
    "rec-0001": {"keys": {"1": KEY_A1.hex(), "2": KEY_A2.hex()}, "revoked": False},
    "wb-0001": {"keys": {"0": KEY_B.hex()}, "revoked": False},
    "rec-0666": {"keys": {"0": KEY_C.hex()}, "revoked": True},
}
REC = Signer("rec-0001", KEY_A1, 1)
REC_K2 = Signer("rec-0001", KEY_A2, 2)
WB = Signer("wb-0001", KEY_B, 0)

FIX = {"lat_e7": 359912345, "lon_e7": 1194012345, "alt_m": 38, "speed_cms": 142,
       "course_cdeg": 27350, "hdop_x10": 8, "fix": 2, "sats": 14,
       "gnss": codec.GNSS_GPS | codec.GNSS_BEIDOU, "age_s": 0}


def vec(name, topic, payload, expect, now=NOW, windows=None, note=""):
    v = {"name": name, "topic": topic, "payload": payload.hex(), "now": now,
         "expect": expect}
    if windows:
        v["windows"] = windows
    if note:
        v["note"] = note
    return v


def ok(payload):
    env = codec.decode(payload)
    return {"ok": True, "fields": env.fields()}


def bad(reason):
    return {"ok": False, "reason": reason}


def valid_vectors():
    out = []
    t = topic_for

    def add(name, signer, kind, body, seq, **kw):
        did = signer.device_id
        p = message.encode(signer, kind, 7, seq, NOW - 5, body, **kw)
        out.append(vec(name, t(did, kind), p, ok(p)))

    add("gps_fix_3d_beidou_gps", REC, KIND_GPS, FIX, 100)
    add("gps_fix_southwest_negative", REC, KIND_GPS, dict(
        FIX, lat_e7=-337512345, lon_e7=-704012345, alt_m=-12, fix=3,
        gnss=codec.GNSS_GPS | codec.GNSS_GLONASS | codec.GNSS_GALILEO), 101)
    add("gps_fix_backlog_flag", REC, KIND_GPS, dict(FIX, age_s=1), 102, backlog=True)
    add("gps_fix_unsynced_clock", WB, KIND_GPS, dict(FIX, fix=1, sats=4, hdop_x10=255), 5,
        unsynced=True)
    add("gps_fix_second_key", REC_K2, KIND_GPS, FIX, 103)
    add("heartbeat_recorder", REC, KIND_HB, dict(
        message.sample_heartbeat(CLASS_RECORDER), recording=True, power=1), 104)
    add("heartbeat_wristband", WB, KIND_HB, dict(
        message.sample_heartbeat(CLASS_WRISTBAND), strap=1, reset_cause=2), 6)
    add("alarm_sos_with_position", REC, KIND_ALARM, dict(
        FIX, alarm="sos", value=0, has_position=True, age_s=12), 105)
    add("alarm_strap_cut_no_position", WB, KIND_ALARM, {
        "alarm": "strap_cut", "value": 0, "has_position": False}, 7)
    add("alarm_low_battery", WB, KIND_ALARM, dict(
        FIX, alarm="low_battery", value=9, has_position=True), 8)
    add("status_online", REC, KIND_STATUS, {
        "state": "online", "device_class": CLASS_RECORDER, "hb_interval_s": 60}, 106)
    add("status_offline_will", WB, KIND_STATUS, {
        "state": "offline", "device_class": CLASS_WRISTBAND, "hb_interval_s": 300}, 9)
    add("command_set_params", REC, KIND_CMD, {
        "action": "set_params", "params": {"gps_period_s": 15, "min_distance_m": 25}}, 1)
    add("command_locate_now", WB, KIND_CMD, {"action": "locate_now", "params": {}}, 2)
    p = message.encode_rotate_key(REC, 3, 4, NOW - 5, 2, KEY_A2)
    out.append(vec("command_rotate_key", t("rec-0001", KIND_CMD), p, ok(p),
                   note="new key id 2 = KEY_A2 wrapped under key id 1"))
    add("ack_ok", REC, KIND_ACK, {"cmd_epoch": 3, "cmd_seq": 1, "result": "ok"}, 107)
    # Freshness edges that must be accepted.
    p = message.encode(REC, KIND_GPS, 7, 50, NOW, FIX)
    w = ReplayWindow().marked(7, 60).marked(7, 10).to_bytes().hex()
    out.append(vec("late_record_inside_window", t("rec-0001", KIND_GPS), p, ok(p),
                   windows={"rec-0001/%d" % LANE_TELEMETRY: w},
                   note="seq 50 was never seen; top is 60"))
    p = message.encode(REC, KIND_GPS, 8, 0, NOW, FIX)
    out.append(vec("new_epoch_after_reboot", t("rec-0001", KIND_GPS), p, ok(p),
                   windows={"rec-0001/%d" % LANE_TELEMETRY: w}))
    p = message.encode(REC, KIND_ALARM, 7, 10, NOW, dict(FIX, alarm="sos", value=0,
                                                          has_position=True))
    out.append(vec("alarm_lane_independent_of_telemetry", t("rec-0001", KIND_ALARM), p,
                   ok(p), windows={"rec-0001/%d" % LANE_TELEMETRY: w}))
    p = message.encode(REC, KIND_GPS, 7, 100, NOW - 20 * 86400, FIX, backlog=True)
    out.append(vec("backlog_twenty_days_old", t("rec-0001", KIND_GPS), p, ok(p)))
    p = message.encode(WB, KIND_GPS, 7, 100, 12, FIX, unsynced=True)
    out.append(vec("unsynced_time_not_checked", t("wb-0001", KIND_GPS), p, ok(p)))
    return out


def flip(p, i, bit=0):
    b = bytearray(p)
    b[i] ^= 1 << bit
    return bytes(b)


def resign(signer, raw):
    """Re-sign a hand-made envelope body so that only its structure is wrong."""
    kind = raw[0] & 0x0F
    b = bytearray(raw) + bytearray(16)
    signer.sign_into(b, len(raw), kind)
    return bytes(b)


def invalid_vectors():
    out = []
    t = topic_for
    gps = message.encode(REC, KIND_GPS, 7, 100, NOW, FIX)
    tg = t("rec-0001", KIND_GPS)
    core = gps[:-16]

    out.append(vec("too_large_one_kilobyte", tg, gps + bytes(1024 - len(gps)),
                   bad("too_large")))
    out.append(vec("empty_payload", tg, b"", bad("truncated")))
    out.append(vec("truncated_header", tg, gps[:20], bad("truncated")))
    out.append(vec("version_2_unsupported", tg, bytes([0x21]) + gps[1:],
                   bad("version_unsupported")))
    out.append(vec("version_0_unsupported", tg, bytes([0x01]) + gps[1:],
                   bad("version_unsupported")))
    out.append(vec("kind_unknown_in_header", tg, bytes([0x19]) + gps[1:], bad("kind_unknown")))
    out.append(vec("reserved_flag_set", tg, gps[:1] + bytes([gps[1] | 0x80]) + gps[2:],
                   bad("flags_reserved")))
    out.append(vec("kind_mismatch_gps_on_alarm_topic", t("rec-0001", KIND_ALARM), gps,
                   bad("kind_mismatch")))
    out.append(vec("topic_wrong_prefix", "ft/v2/rec-0001/gps", gps, bad("topic_invalid")))
    out.append(vec("topic_no_kind", "ft/v1/rec-0001", gps, bad("topic_invalid")))
    out.append(vec("topic_unknown_kind", "ft/v1/rec-0001/video", gps, bad("kind_unknown")))
    out.append(vec("device_id_with_plus", "ft/v1/rec+0001/gps", gps, bad("device_id_invalid")))
    out.append(vec("device_id_with_hash", "ft/v1/rec#1/gps", gps, bad("device_id_invalid")))
    out.append(vec("device_id_too_short", "ft/v1/ab/gps", gps, bad("device_id_invalid")))
    out.append(vec("device_id_extra_level", "ft/v1/rec/0001/gps", gps, bad("kind_unknown")))
    out.append(vec("unknown_device", t("rec-9999", KIND_GPS), gps, bad("unknown_device")))
    revoked = message.encode(Signer("rec-0666", KEY_C, 0), KIND_GPS, 1, 1, NOW, FIX)
    out.append(vec("revoked_device", t("rec-0666", KIND_GPS), revoked, bad("device_revoked")))
    out.append(vec("key_id_unknown", tg, message.encode(Signer("rec-0001", KEY_A1, 5),
                                                        KIND_GPS, 7, 100, NOW, FIX),
                   bad("key_unknown")))
    out.append(vec("forged_tag_bit_flipped", tg, flip(gps, len(gps) - 1), bad("bad_signature")))
    out.append(vec("tampered_latitude", tg, flip(gps, 16, 3), bad("bad_signature")))
    out.append(vec("tampered_seq", tg, flip(gps, 9), bad("bad_signature")))
    out.append(vec("wrong_key", tg, message.encode(Signer("rec-0001", KEY_B, 1), KIND_GPS,
                                                   7, 100, NOW, FIX), bad("bad_signature")))
    out.append(vec("re_topiced_to_another_device", t("wb-0001", KIND_GPS),
                   message.encode(Signer("rec-0001", KEY_B, 0), KIND_GPS, 7, 100, NOW, FIX),
                   bad("bad_signature"),
                   note="signed by rec-0001 with the key wb-0001 also has at id 0"))
    sos = message.encode(REC, KIND_ALARM, 7, 100, NOW, dict(
        FIX, alarm="sos", value=0, has_position=True))
    out.append(vec("alarm_replayed_as_status", t("rec-0001", KIND_STATUS),
                   bytes([0x14]) + sos[1:], bad("bad_signature")))
    # Structure errors behind a valid tag: device bugs, counted apart from forgeries.
    out.append(vec("gps_body_too_short", tg, resign(REC, core[:-1]), bad("length_invalid")))
    out.append(vec("gps_latitude_out_of_range", tg,
                   resign(REC, core[:14] + (900000001).to_bytes(4, "big") + core[18:]),
                   bad("field_invalid")))
    out.append(vec("gps_without_fix", tg, resign(REC, core[:-4] + bytes([core[-4] & 0x3F])
                                                 + core[-3:]), bad("field_invalid")))
    ab = message.encode(REC, KIND_ALARM, 7, 100, NOW, {"alarm": "sos", "value": 0,
                                                        "has_position": False})[:-16]
    out.append(vec("alarm_type_unknown", t("rec-0001", KIND_ALARM),
                   resign(REC, ab[:14] + bytes([99]) + ab[15:]), bad("field_invalid")))
    out.append(vec("alarm_position_bytes_without_position", t("rec-0001", KIND_ALARM),
                   resign(REC, ab[:-1] + b"\x01"), bad("field_invalid")))
    rot = message.encode_rotate_key(REC, 3, 4, NOW, 2, KEY_A2)[:-16]
    out.append(vec("rotate_key_with_parameters", t("rec-0001", KIND_CMD),
                   resign(REC, rot[:15] + b"\x01" + rot[16:]), bad("length_invalid")))
    out.append(vec("rotate_key_id_over_15", t("rec-0001", KIND_CMD),
                   resign(REC, rot[:16] + b"\x10" + rot[17:]), bad("field_invalid")))
    hb = message.encode(WB, KIND_HB, 7, 100, NOW, message.sample_heartbeat(CLASS_WRISTBAND))[:-16]
    out.append(vec("heartbeat_battery_over_100", t("wb-0001", KIND_HB),
                   resign(WB, hb[:14] + bytes([150]) + hb[15:]), bad("field_invalid")))
    # Freshness.
    w = ReplayWindow().marked(7, 150).marked(7, 100).to_bytes().hex()
    wins = {"rec-0001/%d" % LANE_TELEMETRY: w}
    out.append(vec("duplicate_in_window", tg, gps, bad("duplicate"), windows=wins))
    old = message.encode(REC, KIND_GPS, 7, 100, NOW, FIX)
    out.append(vec("replayed_below_window", tg, old, bad("replayed"),
                   windows={"rec-0001/0": ReplayWindow().marked(7, 400).to_bytes().hex()}))
    out.append(vec("replayed_older_epoch", tg, old, bad("replayed"),
                   windows={"rec-0001/0": ReplayWindow().marked(8, 0).to_bytes().hex()}))
    out.append(vec("time_in_future", tg, message.encode(REC, KIND_GPS, 7, 100, NOW + 3600, FIX),
                   bad("time_future")))
    out.append(vec("time_too_old", tg, message.encode(REC, KIND_GPS, 7, 100, NOW - 40 * 86400,
                                                      FIX), bad("time_past")))
    return out


def write():
    meta = {"devices": DEVICES, "limits": {"max_payload": 128, "max_future_s": 300,
                                           "max_past_s": 30 * 86400}}
    for name, vectors in (("valid", valid_vectors()), ("invalid", invalid_vectors())):
        doc = dict(meta, vectors=vectors)
        (HERE / (name + ".json")).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        print("%s: %d vectors" % (name, len(vectors)))


if __name__ == "__main__":
    write()
