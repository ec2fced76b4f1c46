"""End to end: the firmware's app code in a fleet, a real site (mutual-TLS
mosquitto with ACLs, the gateway process, an upstream mosquitto) and the
checker. Each test plays one fault of the schedule and asserts on the
checker's figures: nothing lost, duplicates only with identical ids, no
attack forwarded, every upstream envelope re-verified end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.faults import parse_fault
from simulators.scenario import Outcome, Scenario, ScenarioConfig

pytestmark = pytest.mark.broker


def run(tmp_path: Path, *faults: str, duration: float = 16, tls: bool = True,
        recorders: int = 4, wristbands: int = 2, micropython: int = 0) -> Outcome:
    cfg = ScenarioConfig(tmp_path, recorders=recorders, wristbands=wristbands,
                         micropython=micropython, duration_s=duration, tls=tls,
                         faults=tuple(parse_fault(f) for f in faults), drain_timeout_s=45)
    return Scenario(cfg).run()


def assert_nothing_lost(out: Outcome) -> None:
    r = out.report
    assert r.lost == 0, r.lost_ids
    assert r.attacks_forwarded == 0
    assert r.unverified == 0
    assert r.upstream_malformed == 0
    assert r.forwarded >= r.expected - r.evicted > 0
    assert out.ok


def test_steady_state_delivers_every_record_over_mutual_tls(tmp_path: Path) -> None:
    out = run(tmp_path, micropython=2)   # two of the six are real MicroPython processes
    assert_nothing_lost(out)
    assert out.report.duplicated == 0
    assert out.report.out_of_order == 0
    assert out.gateway["rejected"] == {}
    assert out.report.liveness.get("online", 0) >= 6


def test_link_outage_backlog_arrives_after_the_link_returns(tmp_path: Path) -> None:
    out = run(tmp_path, "5:link_outage:8:rec-0001")
    assert_nothing_lost(out)
    assert any("end of link_outage" in e for e in out.events)


def test_local_broker_restart_loses_nothing(tmp_path: Path) -> None:
    out = run(tmp_path, "7:broker_restart")
    assert_nothing_lost(out)


def test_gateway_sigkill_and_restart_loses_nothing(tmp_path: Path) -> None:
    out = run(tmp_path, "6:gateway_kill:3")
    assert_nothing_lost(out)
    assert any("gateway restarted" in e for e in out.events)


def test_upstream_outage_loses_nothing_and_delivers_the_alarm(tmp_path: Path) -> None:
    out = run(tmp_path, "4:upstream_outage:8", "6:sos::rec-0002")
    assert_nothing_lost(out)
    assert out.report.alarm_latency.n >= 1


def test_device_power_cut_loses_only_its_counted_ram_tail(tmp_path: Path) -> None:
    out = run(tmp_path, "3:link_outage:10:rec-0003", "8:power_cut:3:rec-0003")
    assert_nothing_lost(out)   # RAM-tail records are counted as evicted, not lost


def test_clock_skew_within_limits_is_accepted(tmp_path: Path) -> None:
    out = run(tmp_path, "4:clock_skew:120:wb-0001")
    assert_nothing_lost(out)
    assert "time_future" not in out.gateway["rejected"]


def test_attack_set_reaches_the_gateway_without_tls_and_none_is_forwarded(
        tmp_path: Path) -> None:
    out = run(tmp_path, "6:attack", tls=False, duration=14)
    assert_nothing_lost(out)
    assert out.report.attacks_logged > 200
    rejected = out.gateway["rejected"]
    for reason in ("bad_signature", "key_unknown", "too_large", "truncated",
                   "device_id_invalid", "version_unsupported"):
        assert rejected.get(reason, 0) > 0, rejected
    assert out.gateway["duplicates"] > 0      # the replays: authentic copies, dropped


def test_attack_set_against_mutual_tls_is_stopped_and_none_is_forwarded(
        tmp_path: Path) -> None:
    out = run(tmp_path, "6:attack", duration=14)
    assert_nothing_lost(out)
    assert out.report.attacks_logged > 200
    # the ACL drops what targets other devices; on the rogue's own topics the
    # gateway refuses the tampered and forged records itself
    assert out.gateway["rejected"].get("bad_signature", 0) > 0, out.gateway["rejected"]


def test_key_rotation_during_a_live_stream_loses_nothing(tmp_path: Path) -> None:
    out = run(tmp_path, "3:link_outage:6:rec-0001", "5:rotate_key::rec-0001,wb-0002",
              duration=18)
    assert_nothing_lost(out)     # re-verified with the registry's keys, old and new
    assert sorted(d for d, rc, _ in out.rotations if rc == 0) == ["rec-0001", "wb-0002"]


def test_degraded_4g_link_and_a_draining_battery_lose_nothing(tmp_path: Path) -> None:
    out = run(tmp_path, "3:link_degraded:10:rec-0001,rec-0002", "5:battery:12:wb-0001")
    assert_nothing_lost(out)
    assert out.report.alarm_latency.n >= 1        # low_battery from wb-0001
    lat = out.report.record_latency.max
    assert lat is not None and lat >= 0.8         # the 800 ms of added latency showed


def test_certificate_rotation_during_a_live_stream_loses_nothing(tmp_path: Path) -> None:
    # wb-0002 is a real MicroPython process (the last device of the fleet)
    out = run(tmp_path, "5:rotate_cert::rec-0001,wb-0002", micropython=1, duration=16)
    assert_nothing_lost(out)
    assert sorted(d for d, rc, _ in out.rotations if rc == 0) == ["rec-0001", "wb-0002"]
    from gateway.pki import Pki
    issued = [r for r in Pki(tmp_path / "site" / "pki").issued()
              if r.cn in ("rec-0001", "wb-0002")]
    assert len(issued) == 4                                 # old and new for each
    assert sum(1 for r in issued if r.revoked_at) == 2      # the old ones, once confirmed
