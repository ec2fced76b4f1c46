"""The fault schedule: every line parses or says exactly what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.faults import Fault, FaultError, Timeline, load_schedule, parse_fault

IDS = ["rec-0001", "rec-0002", "wb-0001", "wb-0002"]


def test_a_device_fault_parses_with_its_devices() -> None:
    assert parse_fault("20:link_outage:15:rec-0001,wb-0001") == Fault(
        20.0, "link_outage", 15.0, "rec-0001,wb-0001")


def test_a_site_fault_needs_no_devices() -> None:
    assert parse_fault("45:broker_restart") == Fault(45.0, "broker_restart")


@pytest.mark.parametrize("line, message", [
    ("x:sos::rec-0001", "AT must be seconds"),
    ("10:meteor", "unknown action 'meteor'"),
    ("10:link_outage::rec-0001", "needs a duration"),
    ("10:sos", "needs DEVICES"),
    ("10:gateway_kill:3:rec-0001", "applies to the site"),
    ("10", "expected AT:ACTION"),
    ("10:power_cut:abc:rec-0001", "ARG must be a number"),
    ("-5:sos::rec-0001", "AT must be within"),
])
def test_a_bad_fault_line_says_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(FaultError, match=message):
        parse_fault(line)


def test_unknown_device_ids_are_named() -> None:
    with pytest.raises(FaultError, match="rec-9999"):
        parse_fault("1:sos::rec-9999").pick(IDS, 1)


def test_a_share_of_the_fleet_is_picked_reproducibly() -> None:
    f = parse_fault("1:link_outage:5:50%")
    assert f.pick(IDS, 7) == f.pick(IDS, 7) and len(f.pick(IDS, 7)) == 2
    assert parse_fault("1:sos::*").pick(IDS, 1) == IDS


def test_a_schedule_file_names_the_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "faults.txt"
    p.write_text("# comment\n10:broker_restart\n\n20:nope\n")
    with pytest.raises(FaultError, match=r"faults.txt:4"):
        load_schedule(p)


def test_a_missing_schedule_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FaultError, match="cannot read"):
        load_schedule(tmp_path / "absent.txt")


def test_the_timeline_hands_out_faults_in_time_order() -> None:
    t = Timeline(load_schedule(None, ["30:broker_restart", "10:gateway_kill:2"]))
    assert [f.action for _p, f in t.due(15)] == ["gateway_kill"]
    assert [f.action for _p, f in t.due(60)] == ["broker_restart"]
    assert len(t) == 0
