"""Routes: reproducible from a seed, plausible speeds, near Zhucheng."""

from __future__ import annotations

import math

import pytest

from simulators.routes import (
    CENTRE_LAT, CENTRE_LON, DAY_S, DailyRoute, distance_m, make_route,
)

SEEDS = range(5)


def _samples(kind: str, seed: int, step: float = 1.0, span: float | None = None,
             tod: float = 0.0) -> list:
    r = make_route(kind, seed, tod)
    n = int((span or min(r.period_s, 4 * 3600)) / step)
    return [r.at(i * step) for i in range(n)]


@pytest.mark.parametrize("kind", ["foot", "vehicle", "wristband"])
def test_same_seed_gives_the_same_route(kind: str) -> None:
    a = make_route(kind, 7)
    b = make_route(kind, 7)
    assert [a.at(t) for t in range(0, 5000, 37)] == [b.at(t) for t in range(0, 5000, 37)]


@pytest.mark.parametrize("kind", ["foot", "vehicle", "wristband"])
def test_different_seeds_give_different_routes(kind: str) -> None:
    a, b = make_route(kind, 1), make_route(kind, 2)
    assert a.legs != b.legs


@pytest.mark.parametrize("seed", SEEDS)
def test_foot_patrol_walks_at_1_2_to_1_6_m_per_s(seed: int) -> None:
    moving = [p.speed_ms for p in _samples("foot", seed) if p.speed_ms > 0]
    assert moving
    assert all(1.2 <= v <= 1.6 for v in moving)


@pytest.mark.parametrize("seed", SEEDS)
def test_vehicle_patrol_drives_at_8_to_15_m_per_s_and_stops(seed: int) -> None:
    pts = _samples("vehicle", seed)
    moving = [p.speed_ms for p in pts if p.speed_ms > 0]
    assert all(8.0 <= v <= 15.0 for v in moving)
    assert any(p.speed_ms == 0 for p in pts)


@pytest.mark.parametrize("kind,limit_m", [("foot", 1500), ("vehicle", 4500),
                                          ("wristband", 3600)])
def test_routes_stay_within_a_few_km_of_zhucheng(kind: str, limit_m: float) -> None:
    for seed in range(20):
        r = make_route(kind, seed)
        assert r.max_radius_m() <= limit_m
        p = r.at(1234.5)
        assert distance_m(p.lat, p.lon, CENTRE_LAT, CENTRE_LON) <= limit_m + 1


@pytest.mark.parametrize("kind", ["foot", "vehicle", "wristband"])
def test_positions_never_jump_faster_than_the_route_speed(kind: str) -> None:
    pts = _samples(kind, 3, span=3 * 3600)
    for a, b in zip(pts, pts[1:], strict=False):
        assert distance_m(a.lat, a.lon, b.lat, b.lon) <= max(a.speed_ms, b.speed_ms) + 0.01


def test_course_points_the_way_the_wearer_moves() -> None:
    r = make_route("vehicle", 4)
    for t in range(0, 3000, 7):
        p, q = r.at(t), r.at(t + 0.5)
        if p.speed_ms > 0 and q.label == p.label and distance_m(p.lat, p.lon, q.lat, q.lon) > 1:
            dy = (q.lat - p.lat) * 111_000
            dx = (q.lon - p.lon) * 111_000 * math.cos(math.radians(p.lat))
            bearing = math.degrees(math.atan2(dx, dy)) % 360
            assert min(abs(bearing - p.course_deg), 360 - abs(bearing - p.course_deg)) < 1.0


def test_route_repeats_with_its_period() -> None:
    r = make_route("foot", 5)
    a, b = r.at(100.0), r.at(100.0 + r.period_s)
    assert (a.lat, a.lon, a.speed_ms, a.label) == pytest.approx((b.lat, b.lon, b.speed_ms,
                                                                 b.label))


def test_wristband_is_indoors_at_home_during_curfew() -> None:
    r = make_route("wristband", 11, 0.0)
    assert isinstance(r, DailyRoute)
    s = r.places.schedule
    home = r.places.home
    for tod in (0.0, 3 * 3600.0, s.leave_home_s - 60, s.curfew_s + 60, DAY_S - 60.0):
        p = r.at(tod)
        assert p.indoors and p.label == "home" and r.in_curfew(tod)
        assert distance_m(p.lat, p.lon, *home) < 1.0


def test_wristband_goes_to_work_in_the_day() -> None:
    r = make_route("wristband", 11, 0.0)
    assert isinstance(r, DailyRoute)
    p = r.at(10.5 * 3600)
    assert p.label == "work" and p.indoors and not r.in_curfew(10.5 * 3600)
    assert distance_m(p.lat, p.lon, *r.places.work) < 1.0
    labels = {r.at(t).label for t in range(0, DAY_S, 60)}
    assert {"home", "commute", "work", "walk"} <= labels


def test_wristband_start_time_of_day_shifts_the_clock() -> None:
    a = make_route("wristband", 3, 0.0)
    b = make_route("wristband", 3, 10 * 3600.0)
    assert b.at(0.0).lat == a.at(10 * 3600.0).lat


def test_wristband_spends_most_of_the_day_indoors() -> None:
    pts = _samples("wristband", 2, step=60, span=DAY_S)
    share = sum(p.indoors for p in pts) / len(pts)
    assert 0.6 < share < 0.97


def test_unknown_route_kind_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown route kind 'bike'"):
        make_route("bike", 1)


def test_wristband_refuses_a_time_of_day_outside_the_day() -> None:
    with pytest.raises(ValueError, match="start_time_of_day_s"):
        make_route("wristband", 1, DAY_S)
