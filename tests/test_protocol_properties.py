"""Property tests: decoders never fail in any way but ProtocolError, every
bit flip is caught, and every field round-trips at its stated precision."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec, message
from protocol.auth import Signer
from protocol.errors import ProtocolError
from protocol.replay import ReplayWindow
from protocol.topics import (
    KIND_ACK, KIND_ALARM, KIND_CMD, KIND_GPS, KIND_HB, KIND_STATUS, parse_topic, topic_for,
)
from protocol.verify import DeviceKeys, verify

KEY = bytes(range(32))
SIGNER = Signer("rec-0001", KEY, 3)
KEYS = {"rec-0001": DeviceKeys({3: KEY})}
NOW = 1764806400

positions = st.fixed_dictionaries({
    "lat_e7": st.integers(-900000000, 900000000),
    "lon_e7": st.integers(-1800000000, 1800000000),
    "alt_m": st.integers(-32768, 32767),
    "speed_cms": st.integers(0, 65535),
    "course_cdeg": st.integers(0, 35999),
    "hdop_x10": st.integers(0, 255),
    "fix": st.integers(1, 3),
    "sats": st.integers(0, 63),
    "gnss": st.integers(0, 63),
    "age_s": st.integers(0, 65535),
})
u32 = st.integers(0, 2**32 - 1)


def heartbeats():
    common = {
        "battery_pct": st.one_of(st.integers(0, 100), st.just(255)),
        "power": st.integers(0, 3),
        "signal_dbm": st.integers(-128, 127),
        "outbox_depth": st.integers(0, 65535),
        "outbox_drops": u32,
        "free_heap": u32,
        "reset_cause": st.sampled_from(sorted(codec.RESET_CAUSES)),
        "uptime_s": u32,
        "fw_major": st.integers(0, 255),
        "fw_minor": st.integers(0, 255),
        "fw_patch": st.integers(0, 255),
        "hb_interval_s": st.integers(1, 65535),
    }
    rec = st.fixed_dictionaries(dict(common, device_class=st.just(codec.CLASS_RECORDER),
                                     recording=st.booleans(), storage_free_mib=u32))
    wb = st.fixed_dictionaries(dict(common, device_class=st.just(codec.CLASS_WRISTBAND),
                                    strap=st.sampled_from(sorted(codec.STRAP_STATES))))
    return st.one_of(rec, wb)


alarms = st.one_of(
    st.builds(lambda t, v: {"alarm": t, "value": v, "has_position": False},
              st.sampled_from(sorted(codec.ALARM_CODES)), st.integers(0, 65535)),
    st.builds(lambda p, t, v: dict(p, alarm=t, value=v, has_position=True),
              positions, st.sampled_from(sorted(codec.ALARM_CODES)), st.integers(0, 65535)),
)
commands = st.one_of(
    st.builds(lambda action, params: {"action": action,
                                      "params": params if action == "set_params" else {}},
              st.sampled_from(sorted(set(codec.CMD_ACTION_CODES) - {"rotate_key"})),
              st.dictionaries(st.sampled_from(sorted(codec.CMD_PARAM_CODES)), u32, max_size=6)),
    st.builds(lambda kid, wrapped: {"action": "rotate_key", "params": {}, "new_key_id": kid,
                                    "wrapped_key": wrapped.hex()},
              st.integers(0, 15), st.binary(min_size=32, max_size=32)))
bodies = st.one_of(
    st.tuples(st.just(KIND_GPS), positions),
    st.tuples(st.just(KIND_HB), heartbeats()),
    st.tuples(st.just(KIND_ALARM), alarms),
    st.tuples(st.just(KIND_STATUS), st.fixed_dictionaries({
        "state": st.sampled_from(sorted(codec.STATUS_STATES.values())),
        "device_class": st.sampled_from([1, 2]),
        "hb_interval_s": st.integers(1, 65535)})),
    st.tuples(st.just(KIND_CMD), commands),
    st.tuples(st.just(KIND_ACK), st.fixed_dictionaries({
        "cmd_epoch": u32, "cmd_seq": u32,
        "result": st.sampled_from(sorted(codec.ACK_RESULTS.values()))})),
)


def no_window(device_id: str, lane: int) -> ReplayWindow | None:
    return None


@settings(max_examples=2000)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        env = codec.decode(data)
    except ProtocolError as e:
        assert e.reason
    else:
        assert env.version == 1


@settings(max_examples=1000)
@given(st.binary(min_size=30, max_size=80).map(lambda b: bytes([0x10 | (b[0] % 7)]) + b[1:]))
def test_any_bytes_with_a_v1_header_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except ProtocolError:
        pass


@settings(max_examples=500)
@given(st.text(max_size=80), st.binary(max_size=200))
def test_verify_turns_any_topic_and_payload_into_a_verdict(topic: str, data: bytes) -> None:
    verdict = verify(topic, data, KEYS.get, no_window, NOW)
    assert verdict.ok is False and verdict.reason


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_parse_topic_accepts_only_valid_ids(device_id: str) -> None:
    topic = "ft/v1/%s/gps" % device_id
    try:
        got, kind = parse_topic(topic)
    except ProtocolError:
        return
    assert got == device_id and kind == KIND_GPS
    assert not set(device_id) & set("+#/$ \x00")


@settings(max_examples=300)
@given(bodies, u32, u32, u32, st.booleans(), st.booleans())
def test_encode_decode_round_trips_every_field(kb, epoch, seq, ts, backlog, unsynced) -> None:
    kind, body = kb
    payload = message.encode(SIGNER, kind, epoch, seq, ts, body, backlog, unsynced)
    env = codec.decode(payload)
    assert (env.kind, env.epoch, env.seq, env.ts, env.key_id) == (kind, epoch, seq, ts, 3)
    assert (env.backlog, env.unsynced) == (backlog, unsynced)
    assert env.body == body
    assert message.encode(SIGNER, kind, epoch, seq, ts, env.body, backlog, unsynced) == payload


@settings(max_examples=60, deadline=None)
@given(bodies, u32, u32)
def test_every_single_bit_flip_of_a_valid_envelope_is_rejected(kb, epoch, seq) -> None:
    kind, body = kb
    topic = topic_for("rec-0001", kind)
    payload = message.encode(SIGNER, kind, epoch, seq, NOW, body)
    assert verify(topic, payload, KEYS.get, no_window, NOW).ok
    for i in range(len(payload) * 8):
        mutated = bytearray(payload)
        mutated[i // 8] ^= 1 << (i % 8)
        verdict = verify(topic, bytes(mutated), KEYS.get, no_window, NOW)
        assert not verdict.ok, "bit %d flipped was accepted" % i


def test_signed_gps_fix_is_under_50_bytes() -> None:
    payload = message.encode(SIGNER, KIND_GPS, 1, 1, NOW, {
        "lat_e7": 359900000, "lon_e7": 1194000000, "alt_m": 40, "speed_cms": 150,
        "course_cdeg": 9000, "hdop_x10": 9, "fix": 2, "sats": 12, "gnss": 9, "age_s": 0})
    assert len(payload) == 49


@given(st.one_of(st.text(max_size=40),
                 st.text(alphabet="aZ09_-é/+# \x00", min_size=1, max_size=34)))
def test_device_id_validity_is_exactly_the_spec_pattern(s: str) -> None:
    import re

    from protocol.topics import is_valid_device_id

    assert is_valid_device_id(s) == bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{2,31}", s))
