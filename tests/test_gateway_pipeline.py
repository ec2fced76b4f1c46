"""The gateway's pure decision over the bad-input corpus, and the upstream record format."""

from __future__ import annotations

import base64
import json
import os
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Limits
from gateway.pipeline import (
    DOWNLINK, DUPLICATE, GPS_BODY_KEYS, LANE_ALARM, LANE_STATUS, LANE_TELEMETRY, Accepted,
    Rejected, batch_payload, body_json, decide, protocol_limits,
)
from gateway.testing import Device
from protocol.replay import ReplayWindow
from protocol.verify import DeviceKeys

GW = "gw-test"
NOW = 1_790_000_000


class World:
    """Registry and replay windows as the committer holds them."""

    def __init__(self) -> None:
        self.keys: dict[str, DeviceKeys] = {}
        self.windows: dict[tuple[str, int], ReplayWindow] = {}
        self.limits = Limits()

    def add(self, dev: Device, revoked: bool = False, extra: dict[int, bytes] | None = None
            ) -> Device:
        keys = {dev.key_id: dev.key}
        keys.update(extra or {})
        self.keys[dev.device_id] = DeviceKeys(keys, revoked)
        return dev

    def decide(self, topic: str | bytes, payload: bytes, now: float = NOW) -> Accepted | Rejected:
        d = decide(topic, payload, self.keys.get, lambda dv, ln: self.windows.get((dv, ln)),
                   now, self.limits, protocol_limits(self.limits), GW)
        if isinstance(d, Accepted):
            self.windows[(d.device, d.replay_lane)] = d.window
        return d


@pytest.fixture
def world() -> World:
    return World()


def reason(d: Accepted | Rejected) -> str:
    return "accepted" if isinstance(d, Accepted) else d.reason


def test_valid_gps_is_accepted_on_telemetry_lane(world: World) -> None:
    dev = world.add(Device("rec001"))
    d = world.decide(*dev.gps(ts=NOW))
    assert isinstance(d, Accepted)
    assert d.lane == LANE_TELEMETRY and d.rec_id == "rec001:1:1"


def test_upstream_record_carries_envelope_fields_and_body(world: World) -> None:
    dev = world.add(Device("rec001", key_id=3))
    topic, payload = dev.alarm(ts=NOW - 5, backlog=True)
    d = world.decide(topic, payload, now=NOW + 0.25)
    assert isinstance(d, Accepted) and d.lane == LANE_ALARM
    rec = json.loads(d.record)
    assert set(rec) == {"id", "device", "kind", "epoch", "seq", "ts", "key_id", "backlog",
                        "unsynced", "received_at", "body", "envelope"}
    assert rec["id"] == "rec001:1:1" and rec["kind"] == "alarm" and rec["key_id"] == 3
    assert rec["backlog"] is True and rec["unsynced"] is False
    assert rec["ts"] == NOW - 5 and rec["received_at"] == NOW + 0.25
    assert base64.b64decode(rec["envelope"]) == payload
    assert rec["body"]["alarm"] == "sos" and rec["body"]["lat_e7"] == 359_900_000


def test_batch_payload_is_the_fixed_upstream_document(world: World) -> None:
    dev = world.add(Device("rec001"))
    d = world.decide(*dev.gps(ts=NOW))
    assert isinstance(d, Accepted)
    doc = json.loads(batch_payload(GW, [d.record, d.record]))
    assert doc["gateway"] == GW and len(doc["records"]) == 2


def test_status_and_ack_go_on_status_lane(world: World) -> None:
    dev = world.add(Device("rec001"))
    s = world.decide(*dev.status("online", ts=NOW))
    a = world.decide(*dev.ack(5, 7, ts=NOW))
    assert isinstance(s, Accepted) and s.lane == LANE_STATUS
    assert isinstance(a, Accepted) and a.lane == LANE_STATUS


def corpus(world: World) -> list[tuple[str, str | bytes, bytes, str]]:
    """(name, topic, payload, expected reason) — every case must be rejected."""
    good = world.add(Device("rec001"))
    other = world.add(Device("rec002"))
    revoked = world.add(Device("rec003"), revoked=True)
    unknown = Device("rec999")
    impostor = Device("rec001", key=os.urandom(32))   # right id and key id, wrong key
    # the legitimate stream moves rec001's window to epoch 1
    assert reason(world.decide(*good.gps(ts=NOW))) == "accepted"
    t, p = good.gps(ts=NOW)
    forged = bytearray(p)
    forged[-1] ^= 0x01
    old = Device("rec001", key=good.key, epoch=0)       # an older boot: replayed
    rng = random.Random(7)
    cases = [
        ("forged tag", t, bytes(forged), "bad_signature"),
        ("wrong key", *impostor.gps(ts=NOW), "bad_signature"),
        ("key id unknown", *Device("rec001", key=good.key, key_id=9).gps(ts=NOW),
         "key_unknown"),
        ("replayed older epoch", *old.gps(ts=NOW), "replayed"),
        ("re-topiced", "ft/v1/rec002/gps", good.gps(ts=NOW)[1], "bad_signature"),
        ("re-kinded", "ft/v1/rec001/hb", good.gps(ts=NOW)[1], "kind_mismatch"),
        ("unknown device", *unknown.gps(ts=NOW), "unknown_device"),
        ("revoked device", *revoked.gps(ts=NOW), "device_revoked"),
        ("truncated", t, p[:20], "truncated"),
        ("empty", t, b"", "truncated"),
        ("1 MB payload", t, b"\x11" * (1 << 20), "too_large"),
        ("random bytes", t, bytes([0]) + rng.randbytes(60), "version_unsupported"),
        ("bad device id in topic", "ft/v1/a/gps", p, "device_id_invalid"),
        ("unknown kind in topic", "ft/v1/rec001/bogus", p, "kind_unknown"),
        ("foreign topic", "ft/v2/rec001/gps", p, "topic_invalid"),
        ("huge topic", "ft/v1/" + "x" * 300 + "/gps", p, "topic_invalid"),
        ("non-utf8 topic", b"ft/v1/rec\xff01/gps", p, "topic_invalid"),
        ("clock far ahead", *good.gps(ts=NOW + 3600), "time_future"),
        ("clock far behind", *good.gps(ts=NOW - 90 * 86400), "time_past"),
    ]
    del other
    return cases


def test_bad_input_corpus_each_rejected_with_its_reason(world: World) -> None:
    got = {name: reason(world.decide(t, p)) for name, t, p, _ in corpus(world)}
    want = {name: r for name, _, _, r in corpus(World())}
    assert got == want


def test_rejections_carry_a_bounded_sample_for_quarantine(world: World) -> None:
    dev = world.add(Device("rec001"))
    t, _ = dev.gps(ts=NOW)
    d = world.decide(t, b"\x11" * (1 << 20))
    assert isinstance(d, Rejected) and d.quarantined and len(d.sample) <= 512


def test_exact_resend_is_a_duplicate_not_an_attack(world: World) -> None:
    dev = world.add(Device("rec001"))
    msg = dev.gps(ts=NOW)
    assert reason(world.decide(*msg)) == "accepted"
    d = world.decide(*msg)
    assert isinstance(d, Rejected) and d.reason == DUPLICATE and not d.quarantined


def test_lanes_overtake_without_replay(world: World) -> None:
    """An alarm jumps a backlog of fixes; the later fixes are still accepted."""
    dev = world.add(Device("rec001"))
    fixes = [dev.gps(ts=NOW, backlog=True) for _ in range(50)]
    assert reason(world.decide(*dev.alarm(ts=NOW))) == "accepted"
    assert all(reason(world.decide(*m)) == "accepted" for m in fixes)


def test_unsynced_record_is_kept_and_flagged(world: World) -> None:
    dev = world.add(Device("rec001"))
    d = world.decide(*dev.gps(ts=12, unsynced=True))
    assert isinstance(d, Accepted) and json.loads(d.record)["unsynced"] is True


def test_rotated_out_key_still_verifies_in_grace(world: World) -> None:
    old = Device("rec001", key_id=15)
    new = Device("rec001", key=os.urandom(32), key_id=0)   # key ids wrap 15 -> 0
    world.add(new, extra={15: old.key})
    assert reason(world.decide(*old.gps(ts=NOW))) == "accepted"
    new.seq = old.seq
    assert reason(world.decide(*new.gps(ts=NOW))) == "accepted"


def test_own_downlink_echo_is_ignored_not_quarantined(world: World) -> None:
    d = world.decide("ft/v1/rec001/cmd", b"\x15" * 40)
    assert isinstance(d, Rejected) and d.reason == DOWNLINK and not d.quarantined


def test_verify_cost_is_small() -> None:
    """A sanity bound on the pure path (the benchmark measures the real figure)."""
    w = World()
    dev = w.add(Device("rec001"))
    msgs = [dev.gps(ts=NOW) for _ in range(2000)]
    t0 = time.perf_counter()
    for m in msgs:
        w.decide(*m)
    per = (time.perf_counter() - t0) / len(msgs)
    assert per < 500e-6


def test_upstream_backoff_grows_to_its_cap_with_jitter() -> None:
    import random

    from gateway.forwarder import backoff_delays

    delays = backoff_delays(0.5, 8.0, random.Random(7))
    first = [next(delays) for _ in range(200)]
    caps = [min(8.0, 0.5 * 2 ** n) for n in range(200)]
    assert all(0.25 <= d <= cap for d, cap in zip(first, caps, strict=True))
    assert len({round(d, 6) for d in first[10:]}) > 150      # jittered, not a fixed ladder
    assert max(first[10:]) > 6.0                             # it reaches towards the cap


@given(st.lists(st.integers(-2**31, 2**31), min_size=len(GPS_BODY_KEYS),
                max_size=len(GPS_BODY_KEYS)))
def test_a_gps_body_is_written_exactly_as_the_json_encoder_would(values: list[int]) -> None:
    from protocol.topics import KIND_GPS

    body = dict(zip(GPS_BODY_KEYS, values, strict=True))     # the decoder's key order
    assert body_json(KIND_GPS, body) == json.dumps(body, separators=(",", ":"))


def test_a_decoded_gps_body_is_written_exactly_as_the_json_encoder_would() -> None:
    from protocol.codec import decode
    from protocol.topics import KIND_GPS

    body = decode(Device("rec001").gps()[1]).body
    assert body_json(KIND_GPS, body) == json.dumps(body, separators=(",", ":"))


def test_a_gps_body_with_other_fields_goes_through_the_encoder() -> None:
    from protocol.topics import KIND_GPS

    body = {k: 1 for k in GPS_BODY_KEYS}
    body["extra"] = "x"
    assert '"extra":"x"' in body_json(KIND_GPS, body)
