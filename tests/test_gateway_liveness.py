"""Liveness state machine with a fake clock."""

from __future__ import annotations

from gateway.config import LivenessConfig
from gateway.liveness import OFFLINE, ONLINE, UNKNOWN, LivenessTracker, Transition
from protocol.topics import KIND_GPS, KIND_HB, KIND_STATUS

CFG = LivenessConfig(default_hb_interval_s=60, unknown_factor=2.5, offline_factor=6,
                     debounce_s=10)


def tracker() -> LivenessTracker:
    return LivenessTracker(CFG)


def states(trs: list[Transition]) -> list[str]:
    return [t.state for t in trs]


def test_first_record_makes_device_online() -> None:
    lt = tracker()
    lt.observe("d1", 100.0, KIND_GPS, {})
    assert lt.tick(100.0) == [Transition("d1", ONLINE, 100.0, "record")]


def test_unknown_after_two_and_a_half_heartbeat_intervals() -> None:
    lt = tracker()
    lt.observe("d1", 0.0, KIND_HB, {"hb_interval_s": 20})
    lt.tick(0.0)
    assert lt.tick(49.9) == []
    assert lt.tick(50.0) == [Transition("d1", UNKNOWN, 50.0, "heartbeat_timeout")]


def test_offline_after_six_heartbeat_intervals() -> None:
    lt = tracker()
    lt.observe("d1", 0.0, KIND_HB, {"hb_interval_s": 20})
    lt.tick(0.0)
    lt.tick(60.0)
    assert lt.tick(119.0) == []
    assert lt.tick(120.0) == [Transition("d1", OFFLINE, 120.0, "heartbeat_timeout")]


def test_long_silence_goes_straight_to_offline() -> None:
    lt = tracker()
    lt.observe("d1", 0.0, KIND_GPS, {})
    lt.tick(0.0)
    assert states(lt.tick(10_000.0)) == [OFFLINE]


def test_interval_defaults_until_device_reports_one() -> None:
    lt = tracker()
    lt.observe("d1", 0.0, KIND_GPS, {})
    lt.tick(0.0)
    assert lt.tick(149.0) == []                 # 2.5 x default 60 s
    assert states(lt.tick(150.0)) == [UNKNOWN]


def test_last_will_marks_offline_at_once() -> None:
    lt = tracker()
    lt.observe("d1", 0.0, KIND_GPS, {})
    lt.tick(0.0)
    lt.observe("d1", 30.0, KIND_STATUS, {"state": "offline", "hb_interval_s": 60})
    assert lt.tick(30.0) == [Transition("d1", OFFLINE, 30.0, "last_will")]


def test_any_record_brings_device_back_online() -> None:
    lt = tracker()
    lt.observe("d1", 0.0, KIND_GPS, {})
    lt.tick(0.0)
    assert states(lt.tick(1000.0)) == [OFFLINE]
    lt.observe("d1", 1020.0, KIND_GPS, {})
    assert lt.tick(1020.0) == [Transition("d1", ONLINE, 1020.0, "record")]


def test_flapping_device_emits_at_most_one_transition_per_debounce_period() -> None:
    lt = tracker()
    lt.observe("d1", 0.0, KIND_GPS, {})
    emitted = lt.tick(0.0)
    t = 0.0
    for i in range(100):                       # will / reconnect every 0.1 s for 10 s
        t += 0.1
        if i % 2 == 0:
            lt.observe("d1", t, KIND_STATUS, {"state": "offline", "hb_interval_s": 60})
        else:
            lt.observe("d1", t, KIND_GPS, {})
        emitted += lt.tick(t)
    emitted += lt.tick(t + CFG.debounce_s)
    assert len(emitted) <= 3
    assert emitted[-1].state == lt.devices["d1"].state


def test_state_settled_during_debounce_is_emitted_when_it_ends() -> None:
    lt = tracker()
    lt.observe("d1", 0.0, KIND_GPS, {})
    lt.tick(0.0)
    lt.observe("d1", 1.0, KIND_STATUS, {"state": "offline", "hb_interval_s": 60})
    assert lt.tick(1.0) == []                  # within 10 s of the last emission
    assert states(lt.tick(10.0)) == [OFFLINE]


def test_restored_state_survives_restart_without_reemitting() -> None:
    lt = tracker()
    lt.observe("d1", 0.0, KIND_GPS, {})
    lt.tick(0.0)
    saved = lt.take_dirty()
    lt2 = tracker()
    lt2.restore(saved)
    lt2.observe("d1", 5.0, KIND_GPS, {})
    assert lt2.tick(5.0) == []
    assert lt2.counts() == {ONLINE: 1, UNKNOWN: 0, OFFLINE: 0}
