"""Sampling rules: period, distance, heading (with wrap), stationary, alarm."""

from firmware.app.config import PARAM_LIMITS
from firmware.app.sampler import Sampler, distance_m, heading_change_cdeg

LAT = 312479000
LON = 1215874000
E7_PER_M = 1 / 0.0111319491     # latitude: 1e-7 degrees per metre


def params(**kw):
    p = {name: lim[0] for name, lim in PARAM_LIMITS.items()}
    p.update(kw)
    return p


def started(**kw):
    s = Sampler(params(**kw))
    assert s.due(0, LAT, LON, 1000, 0, False)
    s.taken(0, LAT, LON, 0)
    return s


def north(m):
    return LAT + int(m * E7_PER_M)


def test_first_fix_is_always_taken():
    assert Sampler(params()).due(0, LAT, LON, 0, -1, False)


def test_minimum_period_holds_back_everything():
    s = started(min_period_s=5)
    assert not s.due(4000, north(10000), LON, 1000, 9000, False)


def test_period_elapsed_takes_a_fix_while_moving():
    s = started(gps_period_s=60, min_distance_m=0, min_heading_deg=0)
    assert not s.due(59000, north(1), LON, 1000, 0, False)
    assert s.due(60000, north(1), LON, 1000, 0, False)


def test_minimum_distance_takes_a_fix_before_the_period():
    s = started(min_distance_m=100)
    assert not s.due(10000, north(90), LON, 1000, 0, False)
    assert s.due(10000, north(110), LON, 1000, 0, False)


def test_heading_change_takes_a_fix():
    s = started(min_heading_deg=30, min_distance_m=0)
    assert not s.due(10000, LAT, LON, 1000, 2000, False)
    assert s.due(10000, LAT, LON, 1000, 3100, False)


def test_heading_change_wraps_around_north():
    s = Sampler(params(min_heading_deg=30, min_distance_m=0))
    s.taken(0, LAT, LON, 35000)          # 350 degrees
    assert not s.due(10000, LAT, LON, 1000, 1000, False)     # 10 deg: a 20 deg turn
    assert s.due(10000, LAT, LON, 1000, 2100, False)          # 21 deg: 31 deg turn
    assert heading_change_cdeg(35000, 1000) == 2000
    assert heading_change_cdeg(1000, 35000) == 2000


def test_heading_is_ignored_when_stationary():
    s = started(min_heading_deg=30)
    assert not s.due(10000, LAT, LON, 10, 18000, False)


def test_stationary_uses_the_stationary_period():
    s = started(gps_period_s=60, stationary_period_s=600)
    assert not s.due(120000, LAT, LON, 0, -1, False)
    assert s.stationary
    assert s.due(600000, LAT, LON, 0, -1, False)


def test_active_alarm_uses_the_alarm_period():
    s = started(gps_period_s=60, alarm_period_s=15, stationary_period_s=600)
    assert not s.due(14000, LAT, LON, 0, -1, True)
    assert s.due(15000, LAT, LON, 0, -1, True)


def test_force_takes_a_fix_at_once():
    s = started()
    assert s.due(1000, LAT, LON, 0, -1, False, force=True)


def test_parameters_changed_in_place_apply_at_once():
    p = params(gps_period_s=600, min_distance_m=0, min_heading_deg=0)
    s = Sampler(p)
    s.taken(0, LAT, LON, 0)
    assert not s.due(30000, north(1), LON, 1000, 0, False)
    p["gps_period_s"] = 30
    assert s.due(30000, north(1), LON, 1000, 0, False)


def test_distance_is_about_right():
    assert abs(distance_m(LAT, LON, north(1000), LON) - 1000) < 1
