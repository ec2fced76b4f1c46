"""When to turn the current fix into a record: pure decision logic.

Rules, in order (times in ms from the board's tick clock):

1. ``force`` (locate-now command, first fix after boot) takes one at once.
2. Never two records closer than ``min_period_s``.
3. Period: ``alarm_period_s`` while an alarm is active, else
   ``stationary_period_s`` when stationary, else ``gps_period_s``.
   A record is due when the period has passed.
4. Moving, it is also due when the device moved ``min_distance_m`` since
   the last record, or turned by ``min_heading_deg`` (with the 360 degree
   wrap: 350 -> 10 is a 20 degree turn). The heading rule needs speed above
   ``stationary_speed_cms`` because a receiver's course is noise at rest.

Stationary = speed below ``stationary_speed_cms`` and not moved the minimum
distance. A value of 0 switches the distance or heading rule off.
"""

import math

from firmware.app.compat import ticks_add, ticks_diff

_M_PER_E7 = 0.0111319491  # metres per 1e-7 degree of latitude


def distance_m(lat1_e7, lon1_e7, lat2_e7, lon2_e7):
    """Equirectangular distance: exact enough for tens of kilometres."""
    cos_lat = math.cos((lat1_e7 + lat2_e7) * 0.5e-7 * math.pi / 180)
    dy = (lat2_e7 - lat1_e7) * _M_PER_E7
    dlon = lon2_e7 - lon1_e7
    if dlon > 1800000000:
        dlon -= 3600000000
    elif dlon < -1800000000:
        dlon += 3600000000
    dx = dlon * _M_PER_E7 * cos_lat
    return math.sqrt(dx * dx + dy * dy)


def heading_change_cdeg(a, b):
    """Smallest angle between two courses in centidegrees (0..18000)."""
    d = (a - b) % 36000
    return 36000 - d if d > 18000 else d


class Sampler:
    def __init__(self, params):
        self.params = params          # the device's live parameter dict
        self.last_ms = None
        self.last_lat = 0
        self.last_lon = 0
        self.last_course = -1
        self.stationary = False

    def due(self, now_ms, lat_e7, lon_e7, speed_cms, course_cdeg, alarm_active,
            force=False):
        p = self.params
        if self.last_ms is None or force:
            return True
        elapsed = ticks_diff(now_ms, self.last_ms)
        if elapsed < p["min_period_s"] * 1000:
            return False
        moved = distance_m(self.last_lat, self.last_lon, lat_e7, lon_e7)
        min_dist = p["min_distance_m"]
        slow = speed_cms < p["stationary_speed_cms"]
        self.stationary = slow and (min_dist <= 0 or moved < min_dist)
        if alarm_active:
            period = p["alarm_period_s"]
        elif self.stationary:
            period = p["stationary_period_s"]
        else:
            period = p["gps_period_s"]
        if elapsed >= period * 1000:
            return True
        if self.stationary:
            return False
        if min_dist > 0 and moved >= min_dist:
            return True
        turn = p["min_heading_deg"] * 100
        if (turn > 0 and not slow and course_cdeg >= 0 and self.last_course >= 0
                and heading_change_cdeg(course_cdeg, self.last_course) >= turn):
            return True
        return False

    def age_out(self, now_ms, limit_ms):
        """Ticks wrap (ticks_diff is valid within 6.2 days on a 32-bit port):
        a last record older than ``limit_ms`` (longer than any period) is
        kept at exactly that age, so a week without a fix still reads as due."""
        if self.last_ms is not None and ticks_diff(now_ms, self.last_ms) > limit_ms:
            self.last_ms = ticks_add(now_ms, -limit_ms)

    def taken(self, now_ms, lat_e7, lon_e7, course_cdeg):
        self.last_ms = now_ms
        self.last_lat = lat_e7
        self.last_lon = lon_e7
        self.last_course = course_cdeg
