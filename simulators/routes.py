"""Seeded, reproducible routes around Zhucheng's centre (35.99 N, 119.40 E).

A route answers one question: where is the wearer at time ``t`` (seconds
since the route's start), how fast and which way are they going, and are they
indoors (no sky, so no fix). Routes are pure: the same kind and seed give the
same route on every machine, and ``at(t)`` has no side effects.

Three kinds:

* ``foot_patrol`` — an officer walking a closed loop on a street grid of
  ~150 m blocks at 1.2–1.6 m/s, stopping now and then, sometimes stepping into
  a building for a few minutes.
* ``vehicle_patrol`` — a patrol car on a ~300 m grid at 8–15 m/s, stopping at
  junctions and now and then in an underground car park (indoors).
* ``daily_pattern`` — a wristband wearer's day: at home (indoors) through the
  curfew hours, commute, work (mostly indoors, lunch outside), commute back,
  an evening walk near home, home again before curfew. Its period is 24 h and
  ``t = 0`` is the local time of day given by ``start_time_of_day_s``.

Positions are computed on a local tangent plane (metres east/north of the
centre), which is accurate to centimetres over a few kilometres.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass

CENTRE_LAT = 35.99
CENTRE_LON = 119.40
CENTRE_ALT_M = 92.0
EARTH_RADIUS_M = 6_371_008.8
M_PER_DEG_LAT = math.pi * EARTH_RADIUS_M / 180.0
M_PER_DEG_LON = M_PER_DEG_LAT * math.cos(math.radians(CENTRE_LAT))

DAY_S = 86_400
# China Standard Time, for the daily pattern's clock (no daylight saving).
LOCAL_UTC_OFFSET_S = 8 * 3600

ROUTE_KINDS = ("foot", "vehicle", "wristband")


def to_latlon(x_m: float, y_m: float) -> tuple[float, float]:
    """Degrees (lat, lon) of a point ``x_m`` east and ``y_m`` north of the centre."""
    return CENTRE_LAT + y_m / M_PER_DEG_LAT, CENTRE_LON + x_m / M_PER_DEG_LON


def to_xy(lat: float, lon: float) -> tuple[float, float]:
    """Metres (east, north) of ``(lat, lon)`` from the centre."""
    return (lon - CENTRE_LON) * M_PER_DEG_LON, (lat - CENTRE_LAT) * M_PER_DEG_LAT


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _altitude(x: float, y: float) -> float:
    # A gentle terrain: Zhucheng's centre sits at ~90 m, rising to the south-west.
    return CENTRE_ALT_M - 0.004 * x - 0.006 * y + 3.0 * math.sin(x / 700.0) * math.cos(y / 900.0)


@dataclass(frozen=True)
class RoutePoint:
    """The truth at one instant. ``course_deg`` is true bearing, 0 = north."""

    t: float
    lat: float
    lon: float
    alt_m: float
    speed_ms: float
    course_deg: float
    indoors: bool
    label: str


@dataclass(frozen=True)
class Leg:
    """One piece of a route: a straight move from A to B, or a stay at A (A == B)."""

    start_s: float
    duration_s: float
    x0: float
    y0: float
    x1: float
    y1: float
    indoors: bool
    label: str

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError("leg duration must be positive, got %r" % self.duration_s)

    @property
    def length_m(self) -> float:
        return math.hypot(self.x1 - self.x0, self.y1 - self.y0)


class Route:
    """A closed timeline of legs that repeats with period ``period_s``."""

    def __init__(self, kind: str, seed: int, legs: list[Leg], start_offset_s: float = 0.0,
                 initial_course_deg: float = 0.0) -> None:
        if not legs:
            raise ValueError("a route needs at least one leg")
        self.kind = kind
        self.seed = seed
        self.legs = tuple(legs)
        self.start_offset_s = start_offset_s
        self._starts = [leg.start_s for leg in legs]
        self.period_s = legs[-1].start_s + legs[-1].duration_s
        # Course while standing still: the heading of the last move before.
        courses: list[float] = []
        last = initial_course_deg
        for leg in legs:
            if leg.length_m > 0:
                last = _bearing(leg.x0, leg.y0, leg.x1, leg.y1)
            courses.append(last)
        # A stay at the beginning of the loop inherits the loop's last heading.
        first_moving = next((i for i, leg in enumerate(legs) if leg.length_m > 0), None)
        if first_moving is not None:
            for i in range(first_moving):
                courses[i] = last
        self._courses = tuple(courses)

    def leg_at(self, t: float) -> tuple[Leg, float, float]:
        """(leg, seconds into the leg, its course) at route time ``t``."""
        u = (t + self.start_offset_s) % self.period_s
        i = bisect.bisect_right(self._starts, u) - 1
        i = max(0, min(i, len(self.legs) - 1))
        leg = self.legs[i]
        return leg, u - leg.start_s, self._courses[i]

    def at(self, t: float) -> RoutePoint:
        leg, into, course = self.leg_at(t)
        f = min(1.0, max(0.0, into / leg.duration_s))
        x = leg.x0 + (leg.x1 - leg.x0) * f
        y = leg.y0 + (leg.y1 - leg.y0) * f
        speed = leg.length_m / leg.duration_s
        lat, lon = to_latlon(x, y)
        return RoutePoint(t, lat, lon, _altitude(x, y), speed, course, leg.indoors, leg.label)

    def indoors(self, t: float) -> bool:
        return self.leg_at(t)[0].indoors

    def max_radius_m(self) -> float:
        """The farthest the route goes from the centre."""
        return max(max(math.hypot(leg.x0, leg.y0), math.hypot(leg.x1, leg.y1))
                   for leg in self.legs)


def _bearing(x0: float, y0: float, x1: float, y1: float) -> float:
    return math.degrees(math.atan2(x1 - x0, y1 - y0)) % 360.0


class _Timeline:
    """Builds legs one after another."""

    def __init__(self, x: float, y: float) -> None:
        self.legs: list[Leg] = []
        self.t = 0.0
        self.x = x
        self.y = y

    def move(self, x: float, y: float, speed_ms: float, label: str, indoors: bool = False) -> None:
        d = math.hypot(x - self.x, y - self.y)
        if d <= 0:
            return
        dur = d / speed_ms
        self.legs.append(Leg(self.t, dur, self.x, self.y, x, y, indoors, label))
        self.t += dur
        self.x, self.y = x, y

    def move_grid(self, x: float, y: float, speed_ms: float, label: str,
                  x_first: bool = True) -> None:
        """Along streets: one axis, then the other."""
        if x_first:
            self.move(x, self.y, speed_ms, label)
        else:
            self.move(self.x, y, speed_ms, label)
        self.move(x, y, speed_ms, label)

    def stay(self, duration_s: float, label: str, indoors: bool) -> None:
        if duration_s <= 0:
            return
        self.legs.append(Leg(self.t, duration_s, self.x, self.y, self.x, self.y, indoors, label))
        self.t += duration_s


def _grid_loop(rng: random.Random, half_extent_blocks: int,
               n_waypoints: int) -> list[tuple[int, int]]:
    """A closed walk over grid nodes: start, n_waypoints random nodes, back to start."""
    def node() -> tuple[int, int]:
        return (rng.randint(-half_extent_blocks, half_extent_blocks),
                rng.randint(-half_extent_blocks, half_extent_blocks))

    start = node()
    nodes = [start]
    for _ in range(n_waypoints):
        nxt = node()
        while nxt == nodes[-1]:
            nxt = node()
        nodes.append(nxt)
    if nodes[-1] != start:
        nodes.append(start)
    return nodes


def foot_patrol(seed: int, n_waypoints: int = 10, block_m: float = 150.0,
                half_extent_blocks: int = 6) -> Route:
    """A foot patrol loop within ~1.3 km of the centre, 1.2–1.6 m/s."""
    rng = random.Random("foot:%d" % seed)
    nodes = _grid_loop(rng, half_extent_blocks, n_waypoints)
    tl = _Timeline(nodes[0][0] * block_m, nodes[0][1] * block_m)
    for gx, gy in nodes[1:]:
        speed = rng.uniform(1.2, 1.6)
        tl.move_grid(gx * block_m, gy * block_m, speed, "walk", x_first=rng.random() < 0.5)
        r = rng.random()
        if r < 0.15:
            tl.stay(rng.uniform(60, 300), "in_building", indoors=True)
        elif r < 0.55:
            tl.stay(rng.uniform(5, 60), "stop", indoors=False)
    if not tl.legs:  # degenerate seed/parameters: stand still outside
        tl.stay(60, "stop", indoors=False)
    return Route("foot", seed, tl.legs)


def vehicle_patrol(seed: int, n_waypoints: int = 14, block_m: float = 300.0,
                   half_extent_blocks: int = 10) -> Route:
    """A vehicle patrol loop within ~4.3 km of the centre, 8–15 m/s, with stops."""
    rng = random.Random("vehicle:%d" % seed)
    nodes = _grid_loop(rng, half_extent_blocks, n_waypoints)
    tl = _Timeline(nodes[0][0] * block_m, nodes[0][1] * block_m)
    for gx, gy in nodes[1:]:
        x_first = rng.random() < 0.5
        # Drive block by block so that junction stops fall on junctions.
        tx, ty = gx * block_m, gy * block_m
        axes = ("x", "y") if x_first else ("y", "x")
        for axis in axes:
            target = tx if axis == "x" else ty
            here = tl.x if axis == "x" else tl.y
            step = block_m if target > here else -block_m
            for _ in range(int(round(abs(target - here) / block_m))):
                speed = rng.uniform(8.0, 15.0)
                if axis == "x":
                    tl.move(tl.x + step, tl.y, speed, "drive")
                else:
                    tl.move(tl.x, tl.y + step, speed, "drive")
                if rng.random() < 0.25:
                    tl.stay(rng.uniform(5, 45), "junction", indoors=False)
        r = rng.random()
        if r < 0.1:
            tl.stay(rng.uniform(120, 600), "car_park", indoors=True)
        elif r < 0.4:
            tl.stay(rng.uniform(30, 180), "stop", indoors=False)
    if not tl.legs:
        tl.stay(60, "stop", indoors=False)
    return Route("vehicle", seed, tl.legs)


@dataclass(frozen=True)
class DailySchedule:
    """Local times of day (seconds after midnight) of a wristband wearer's day."""

    leave_home_s: float
    lunch_out_s: float
    lunch_back_s: float
    leave_work_s: float
    evening_out_s: float
    curfew_s: float

    def __post_init__(self) -> None:
        times = (self.leave_home_s, self.lunch_out_s, self.lunch_back_s, self.leave_work_s,
                 self.evening_out_s, self.curfew_s)
        if any(b <= a for a, b in zip(times, times[1:], strict=False)) or not 0 < times[0]:
            raise ValueError("schedule times must increase within the day: %r" % (times,))
        if self.curfew_s >= DAY_S:
            raise ValueError("curfew must start before midnight")


@dataclass(frozen=True)
class Places:
    """A wristband wearer's schedule, home and work (degrees)."""

    schedule: DailySchedule
    home: tuple[float, float]
    work: tuple[float, float]


class DailyRoute(Route):
    """A daily pattern, which also knows its schedule and places (for curfew checks)."""

    def __init__(self, seed: int, legs: list[Leg], start_time_of_day_s: float,
                 places: Places) -> None:
        super().__init__("wristband", seed, legs, start_offset_s=start_time_of_day_s)
        self.places = places

    def in_curfew(self, t: float) -> bool:
        """True during curfew hours (curfew start until leaving home) at route time ``t``."""
        tod = (t + self.start_offset_s) % DAY_S
        s = self.places.schedule
        return tod >= s.curfew_s or tod < s.leave_home_s


def daily_pattern(seed: int, start_time_of_day_s: float = 0.0) -> DailyRoute:
    """A wristband wearer's 24-hour day; ``t = 0`` is local ``start_time_of_day_s``.

    Home and work are 0.5–3 km from the centre, on the grid; the wearer is
    indoors at home from ``curfew_s`` to ``leave_home_s`` and at work except at
    lunch. ``route.places`` gives the day's times and places for curfew checks.
    """
    if not 0 <= start_time_of_day_s < DAY_S:
        raise ValueError("start_time_of_day_s must be in [0, 86400)")
    rng = random.Random("wristband:%d" % seed)
    block = 100.0

    def place(lo: float, hi: float) -> tuple[float, float]:
        r = rng.uniform(lo, hi)
        a = rng.uniform(0, 2 * math.pi)
        return round(r * math.cos(a) / block) * block, round(r * math.sin(a) / block) * block

    home = place(500, 3000)
    work = place(500, 3000)
    while math.hypot(work[0] - home[0], work[1] - home[1]) < 600:
        work = place(500, 3000)
    lunch = (work[0] + rng.choice((-2, -1, 1, 2)) * block, work[1] + rng.choice((-2, 2)) * block)
    park = (home[0] + rng.choice((-4, -3, 3, 4)) * block, home[1] + rng.choice((-3, 3)) * block)
    sched = DailySchedule(
        leave_home_s=rng.uniform(7.25, 8.0) * 3600,
        lunch_out_s=rng.uniform(11.75, 12.25) * 3600,
        lunch_back_s=rng.uniform(12.75, 13.25) * 3600,
        leave_work_s=rng.uniform(17.25, 18.0) * 3600,
        evening_out_s=rng.uniform(19.0, 19.75) * 3600,
        curfew_s=rng.uniform(21.0, 21.75) * 3600,
    )
    commute_speed = rng.uniform(4.0, 6.0)   # e-bike
    walk = rng.uniform(1.1, 1.4)

    tl = _Timeline(*home)
    tl.stay(sched.leave_home_s, "home", indoors=True)
    tl.move_grid(work[0], work[1], commute_speed, "commute")
    tl.stay(sched.lunch_out_s - tl.t, "work", indoors=True)
    tl.move_grid(lunch[0], lunch[1], walk, "walk")
    tl.stay(max(60.0, sched.lunch_back_s - tl.t - 600), "lunch", indoors=False)
    tl.move_grid(work[0], work[1], walk, "walk", x_first=False)
    tl.stay(sched.leave_work_s - tl.t, "work", indoors=True)
    tl.move_grid(home[0], home[1], commute_speed, "commute", x_first=False)
    tl.stay(sched.evening_out_s - tl.t, "home", indoors=True)
    tl.move_grid(park[0], park[1], walk, "walk")
    tl.stay(max(60.0, sched.curfew_s - tl.t - 900), "park", indoors=False)
    tl.move_grid(home[0], home[1], walk, "walk", x_first=False)
    if tl.t >= DAY_S:
        raise ValueError("daily pattern overflows the day (seed %d)" % seed)
    tl.stay(DAY_S - tl.t, "home", indoors=True)
    places = Places(sched, to_latlon(*home), to_latlon(*work))
    return DailyRoute(seed, tl.legs, start_time_of_day_s, places)


def make_route(kind: str, seed: int, start_time_of_day_s: float = 0.0) -> Route:
    """The route of ``kind`` (one of ROUTE_KINDS) for ``seed``."""
    if kind == "foot":
        return foot_patrol(seed)
    if kind == "vehicle":
        return vehicle_patrol(seed)
    if kind == "wristband":
        return daily_pattern(seed, start_time_of_day_s)
    raise ValueError("unknown route kind %r: expected one of %s" % (kind, ", ".join(ROUTE_KINDS)))
