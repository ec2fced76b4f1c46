"""The end-to-end checker: synthetic upstream batches, files, CLI, and a real broker."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from protocol.auth import Signer
from protocol.message import encode, sample_heartbeat
from protocol.topics import KIND_BY_NAME
from protocol.verify import DeviceKeys
from simulators.checker import (
    AttackLog, Checker, CheckerConfig, CheckerError, ProducedLog, UpstreamTally,
    load_attacks, load_produced, percentile, sha256_hex,
)

KEYS = {"rec-0001": bytes(range(32)), "wb-0001": bytes(range(32, 64))}
T0 = 1_780_000_000.0
POS = {"lat_e7": 359900000, "lon_e7": 1194000000, "alt_m": 90, "speed_cms": 130,
       "course_cdeg": 9000, "hdop_x10": 9, "fix": 2, "sats": 9, "gnss": 9, "age_s": 0}


def envelope(device: str, kind: str, epoch: int, seq: int, backlog: bool = False,
             key: bytes | None = None) -> bytes:
    signer = Signer(device, key or KEYS[device], 0)
    if kind == "gps":
        body: dict[str, Any] = dict(POS)
    elif kind == "alarm":
        body = dict(POS, alarm="sos", value=0, has_position=True)
    else:
        body = sample_heartbeat()
    return encode(signer, KIND_BY_NAME[kind], epoch, seq, int(T0) + seq, body, backlog=backlog)


def rec(device: str, kind: str, epoch: int, seq: int, backlog: bool = False,
        env: bytes | None = None, **override: Any) -> dict[str, Any]:
    raw = env if env is not None else envelope(device, kind, epoch, seq, backlog)
    r = {"id": "%s:%d:%d" % (device, epoch, seq), "device": device, "kind": kind,
         "epoch": epoch, "seq": seq, "ts": int(T0) + seq, "key_id": 0, "backlog": backlog,
         "unsynced": False, "received_at": T0 + seq + 0.1, "body": {},
         "envelope": base64.b64encode(raw).decode()}
    r.update(override)
    return r


def batch(lane: str, *records: dict[str, Any], gw: str = "gw-1") -> tuple[str, bytes]:
    return ("ft/up/v1/%s/%s" % (gw, lane),
            json.dumps({"gateway": gw, "records": list(records)}).encode())


def produced(*items: tuple[str, str, int, int]) -> ProducedLog:
    log = ProducedLog()
    for device, kind, epoch, seq in items:
        log.record(device, kind, epoch, seq, T0 + seq)
    return log


def tally_of(*batches: tuple[str, bytes], keys: bool = True,
             at: float = T0 + 1.0) -> UpstreamTally:
    t = UpstreamTally({d: DeviceKeys({0: k}) for d, k in KEYS.items()} if keys else None)
    for i, (topic, payload) in enumerate(batches):
        t.ingest(topic, payload, at + i)
    return t


GPS3 = (("rec-0001", "gps", 1, 1), ("rec-0001", "gps", 1, 2), ("rec-0001", "gps", 1, 3))


def test_everything_forwarded_once_passes() -> None:
    log = produced(*GPS3)
    t = tally_of(batch("telemetry", *(rec(*p) for p in GPS3)))
    r = t.report(*log.snapshot())
    assert (r.produced, r.forwarded, r.lost, r.duplicated, r.attacks_forwarded) == (3, 3, 0, 0, 0)
    assert r.unverified == 0 and r.ok and r.exit_code == 0


def test_a_record_missing_upstream_is_lost() -> None:
    log = produced(*GPS3, ("rec-0001", "alarm", 1, 4))
    t = tally_of(batch("telemetry", rec(*GPS3[0]), rec(*GPS3[2])))
    r = t.report(*log.snapshot())
    assert r.lost == 2 and r.lost_by_kind == {"gps": 1, "alarm": 1}
    assert set(r.lost_ids) == {"rec-0001:1:2", "rec-0001:1:4"}
    assert not r.ok and r.exit_code == 1


def test_a_record_that_need_not_be_sent_is_not_lost() -> None:
    log = produced(GPS3[0])
    log.record("rec-0001", "status", 1, 9, T0, expect=False)   # a last will
    r = tally_of(batch("telemetry", rec(*GPS3[0]))).report(*log.snapshot())
    assert r.lost == 0 and r.expected == 1 and r.produced == 2


def test_a_record_the_device_evicted_is_reported_not_lost() -> None:
    log = produced(*GPS3)
    log.evicted("rec-0001", 1, 2, T0 + 5, "outbox_full")
    r = tally_of(batch("telemetry", rec(*GPS3[0]), rec(*GPS3[2]))).report(*log.snapshot())
    assert r.lost == 0 and r.evicted == 1 and r.ok


def test_extra_copies_are_counted_as_duplicates() -> None:
    log = produced(*GPS3)
    t = tally_of(batch("telemetry", *(rec(*p) for p in GPS3)),
                 batch("telemetry", rec(*GPS3[1]), rec(*GPS3[1])))
    r = t.report(*log.snapshot())
    assert r.duplicated == 2 and r.forwarded == 3 and r.out_of_order == 0


def test_a_record_behind_a_later_one_of_its_lane_is_out_of_order() -> None:
    log = produced(*GPS3)
    t = tally_of(batch("telemetry", rec(*GPS3[0]), rec(*GPS3[2])),
                 batch("telemetry", rec(*GPS3[1])))
    r = t.report(*log.snapshot())
    assert r.out_of_order == 1
    assert r.out_of_order_by_lane == {"telemetry": {"live": 1, "backlog": 0}}


def test_out_of_order_backlog_is_told_apart_from_live() -> None:
    log = produced(*GPS3)
    t = tally_of(batch("telemetry", rec(*GPS3[2]), rec(*GPS3[0], backlog=True),
                       rec(*GPS3[1], backlog=True)))
    r = t.report(*log.snapshot())
    assert r.out_of_order_by_lane["telemetry"] == {"live": 0, "backlog": 2}


def test_an_alarm_overtaking_telemetry_is_not_out_of_order() -> None:
    alarm = ("rec-0001", "alarm", 1, 4)
    log = produced(*GPS3, alarm)
    t = tally_of(batch("alarm", rec(*alarm)), batch("telemetry", *(rec(*p) for p in GPS3)))
    assert t.report(*log.snapshot()).out_of_order == 0


def test_a_new_boot_epoch_restarts_the_order() -> None:
    items = (("wb-0001", "gps", 1, 50), ("wb-0001", "gps", 2, 1))
    log = produced(*items)
    r = tally_of(batch("telemetry", *(rec(*p) for p in items))).report(*log.snapshot())
    assert r.out_of_order == 0


def test_a_forwarded_attack_payload_is_detected() -> None:
    log = produced(GPS3[0])
    attacks = AttackLog()
    forged = envelope("rec-0001", "gps", 1, 1, key=b"\x01" * 32)
    attacks.record("forged", "ft/v1/rec-0001/gps", forged, T0)
    t = tally_of(batch("telemetry", rec(*GPS3[0], env=forged)), keys=False)
    r = t.report(*log.snapshot(), attacks.snapshot())
    assert r.attacks_forwarded == 1 and r.attacks_forwarded_by_reason == {"attack_payload": 1}
    assert r.exit_code == 1


def test_an_unforwarded_attack_is_fine() -> None:
    log = produced(GPS3[0])
    attacks = AttackLog()
    attacks.record("malformed", "ft/v1/rec-0001/gps", b"\x00" * 5, T0)
    r = tally_of(batch("telemetry", rec(*GPS3[0]))).report(*log.snapshot(), attacks.snapshot())
    assert r.attacks_logged == 1 and r.attacks_forwarded == 0 and r.ok


def test_a_replayed_copy_beyond_the_legitimate_one_is_an_attack() -> None:
    log = produced(GPS3[0])
    attacks = AttackLog()
    legit = envelope(*GPS3[0])
    attacks.record("replayed", "ft/v1/rec-0001/gps", legit, T0, legit_copy=True)
    once = tally_of(batch("telemetry", rec(*GPS3[0]))).report(*log.snapshot(),
                                                             attacks.snapshot())
    assert once.attacks_forwarded == 0
    twice = tally_of(batch("telemetry", rec(*GPS3[0])), batch("telemetry", rec(*GPS3[0])))
    r = twice.report(*log.snapshot(), attacks.snapshot())
    assert r.attacks_forwarded == 1 and r.attacks_forwarded_by_reason == {"replayed_copy": 1}


def test_a_record_nobody_produced_is_an_attack() -> None:
    log = produced(GPS3[0])
    t = tally_of(batch("telemetry", rec(*GPS3[0]), rec("wb-0001", "gps", 7, 7)))
    r = t.report(*log.snapshot())
    assert r.attacks_forwarded_by_reason == {"unknown_record": 1} and not r.ok


def test_an_envelope_other_than_the_one_produced_is_an_attack() -> None:
    log = ProducedLog()
    log.record("rec-0001", "gps", 1, 1, T0, envelope=envelope("rec-0001", "gps", 1, 1))
    other = envelope("rec-0001", "gps", 1, 1, backlog=True)   # same id, other bytes
    r = tally_of(batch("telemetry", rec(*GPS3[0], env=other, backlog=True))).report(
        *log.snapshot())
    assert r.attacks_forwarded_by_reason == {"envelope_differs": 1}


def test_reverification_catches_a_bad_signature() -> None:
    log = produced(GPS3[0])
    forged = envelope("rec-0001", "gps", 1, 1, key=b"\x02" * 32)
    r = tally_of(batch("telemetry", rec(*GPS3[0], env=forged))).report(*log.snapshot())
    assert r.unverified_by_reason == {"bad_signature": 1} and r.verified_with_keys
    assert r.exit_code == 1


def test_without_keys_envelopes_are_decoded_but_not_authenticated() -> None:
    log = produced(GPS3[0])
    forged = envelope("rec-0001", "gps", 1, 1, key=b"\x02" * 32)
    r = tally_of(batch("telemetry", rec(*GPS3[0], env=forged)), keys=False).report(
        *log.snapshot())
    assert r.unverified == 0 and not r.verified_with_keys


def test_a_record_disagreeing_with_its_envelope_is_unverified() -> None:
    log = produced(GPS3[0])
    r = tally_of(batch("telemetry", rec(*GPS3[0], ts=1))).report(*log.snapshot())
    assert r.unverified_by_reason == {"field_mismatch": 1}


def test_an_envelope_that_is_not_base64_is_unverified() -> None:
    log = produced(GPS3[0])
    r = tally_of(batch("telemetry", rec(*GPS3[0], envelope="%%%"))).report(*log.snapshot())
    assert r.unverified_by_reason == {"envelope_not_base64": 1}


@pytest.mark.parametrize("topic,payload", [
    ("ft/up/v1/gw-1/telemetry", b"not json"),
    ("ft/up/v1/gw-1/telemetry", b'{"gateway": "gw-2", "records": []}'),
    ("ft/up/v1/gw-1/bogus", b'{"gateway": "gw-1", "records": []}'),
    ("ft/up/v1/gw-1/telemetry", b'{"gateway": "gw-1", "records": [{"id": 3}]}'),
])
def test_a_malformed_upstream_message_fails_the_run(topic: str, payload: bytes) -> None:
    t = UpstreamTally()
    t.ingest(topic, payload, T0)
    r = t.report([])
    assert r.upstream_malformed == 1 and r.exit_code == 1


def test_liveness_records_are_counted_by_state() -> None:
    live = {"id": "liveness:gw-1:rec-0001:1", "kind": "liveness", "device": "rec-0001",
            "state": "offline", "since": T0, "reason": "timeout"}
    r = tally_of(batch("status", live)).report([])
    assert r.liveness == {"offline": 1} and r.ok and r.upstream_records == 0


def test_latencies_are_arrival_minus_production_by_nearest_rank() -> None:
    log = ProducedLog()
    t = UpstreamTally()
    for seq in range(1, 101):
        log.record("rec-0001", "gps", 1, seq, T0)
        t.ingest(*batch("telemetry", rec("rec-0001", "gps", 1, seq)), T0 + seq / 100.0)
    log.record("rec-0001", "alarm", 1, 101, T0)
    t.ingest(*batch("alarm", rec("rec-0001", "alarm", 1, 101)), T0 + 0.25)
    r = t.report(*log.snapshot())
    assert r.record_latency.n == 101
    assert r.record_latency.p50 == pytest.approx(0.50)
    assert r.record_latency.p99 == pytest.approx(0.99)
    assert r.alarm_latency.n == 1 and r.alarm_latency.p99 == pytest.approx(0.25)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([1.0, 2.0], 99) == 2.0
    assert percentile([], 50) is None


def test_report_json_has_every_measure() -> None:
    log = produced(*GPS3)
    r = tally_of(batch("telemetry", rec(*GPS3[0]))).report(*log.snapshot())
    d = json.loads(r.to_json())
    for k in ("produced", "forwarded", "lost", "duplicated", "out_of_order",
              "attacks_forwarded", "record_latency", "alarm_latency", "ok"):
        assert k in d
    assert d["lost"] == 2 and d["ok"] is False and d["record_latency"]["n"] == 1


def test_report_renders_as_a_table() -> None:
    from rich.console import Console

    con = Console(record=True, width=100)
    tally_of(batch("telemetry", rec(*GPS3[0]))).report(*produced(GPS3[0]).snapshot()).render(con)
    text = con.export_text()
    assert "PASS" in text and "attack messages forwarded" in text


def test_produced_log_file_round_trips_and_ignores_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "produced.jsonl"
    log = ProducedLog(path)
    log.record("rec-0001", "gps", 1, 1, T0, envelope=b"abc")
    log.record("rec-0001", "status", 1, 2, T0, expect=False)
    log.evicted("rec-0001", 1, 3, T0 + 1)
    log.close()
    with open(path, "a") as fh:
        fh.write('{"type": "produced", "id": "rec-0')
    recs, evs = load_produced([path])
    assert [r.id for r in recs] == ["rec-0001:1:1", "rec-0001:1:2"]
    assert recs[0].sha256 == sha256_hex(b"abc") and recs[1].expect is False
    assert [e.id for e in evs] == ["rec-0001:1:3"]


def test_produced_log_names_a_bad_entry(tmp_path: Path) -> None:
    path = tmp_path / "produced.jsonl"
    path.write_text('{"id": "x:1:1", "device": "y", "kind": "gps", "epoch": 1, "seq": 1, '
                    '"produced_at": 0}\n')
    with pytest.raises(CheckerError, match="entry 1: id 'x:1:1' does not match"):
        load_produced([path])


def test_attack_log_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "attacks.jsonl"
    log = AttackLog(path)
    log.record("tampered", "ft/v1/rec-0001/gps", b"xyz", T0, note="bit flip")
    log.close()
    (a,) = load_attacks([path])
    assert (a.attack, a.device, a.sha256, a.size) == ("tampered", "rec-0001", sha256_hex(b"xyz"),
                                                      3)


def test_checker_start_fails_clearly_without_a_broker() -> None:
    from simulators.mosquitto import free_port

    port = free_port()
    with pytest.raises(CheckerError, match="cannot connect to 127.0.0.1:%d" % port):
        Checker(CheckerConfig(port=port, connect_timeout_s=2)).start()


@pytest.mark.broker
def test_checker_reports_a_batch_published_to_mosquitto(broker: Any) -> None:
    log = produced(*GPS3, ("rec-0001", "alarm", 1, 4))
    cfg = CheckerConfig(port=broker.port, client_id="ck-%d" % time.monotonic_ns(),
                        clean_session=True)
    keys = {d: DeviceKeys({0: k}) for d, k in KEYS.items()}
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-test")
    with Checker(cfg, produced=log, keys=keys) as ck:
        pub.connect("127.0.0.1", broker.port, 30)
        pub.loop_start()
        try:
            for topic, payload in (batch("telemetry", *(rec(*p) for p in GPS3)),
                                   batch("alarm", rec("rec-0001", "alarm", 1, 4))):
                pub.publish(topic, payload, qos=1).wait_for_publish(5)
        finally:
            pub.disconnect()
            pub.loop_stop()
        assert ck.wait_idle(0.2, 10, min_messages=2)
        r = ck.report()
    assert (r.upstream_messages, r.forwarded, r.lost, r.attacks_forwarded) == (2, 4, 0, 0)
    assert r.alarm_latency.n == 1 and r.ok


def test_more_upstream_records_than_the_bound_fail_the_run() -> None:
    log = produced(*GPS3)
    t = UpstreamTally(max_records=2)
    t.ingest(*batch("telemetry", *(rec(*p) for p in GPS3)), T0)
    r = t.report(*log.snapshot())
    assert r.upstream_overflow == 1 and not r.ok


def test_an_overflowing_in_memory_produced_log_refuses_to_report() -> None:
    log = ProducedLog(max_kept=2)
    for p in GPS3:
        log.record(*p, T0)
    assert log.overflow == 1
    with pytest.raises(CheckerError, match="overflowed"):
        log.snapshot()


def test_an_attack_reusing_a_produced_envelope_is_not_blamed_on_the_original() -> None:
    legit = envelope(*GPS3[0])
    log = ProducedLog()
    log.record("rec-0001", "gps", 1, 1, T0, envelope=legit)
    attacks = AttackLog()
    attacks.record("malformed", "ft/v1/rec-0001/gps/extra", legit, T0)   # not flagged a copy
    r = tally_of(batch("telemetry", rec(*GPS3[0]))).report(*log.snapshot(), attacks.snapshot())
    assert r.attacks_forwarded == 0 and r.ok
