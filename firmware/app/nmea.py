"""NMEA 0183 parser: GGA, RMC and GSA from GP, GL, GA, GB, BD, GN (and GQ).

Bytes go in through ``feed``; the latest fix is read from the parser's
attributes. The hot path allocates nothing per sentence: one preallocated
line buffer, one preallocated list of field offsets, numbers parsed in
place as integers (coordinates in 1e-7 degrees; on 32-bit ports a longitude
beyond 107 degrees is one big int per fix, not per sentence).

What is dropped, and counted: lines with a bad or missing checksum, lines
longer than ``MAX_LINE`` (a lost line end), control or 8-bit bytes (noise at
power-up, baud mismatch), proprietary sentences ($P...), other talkers and
sentence types. Nothing here raises on input.

Position is reported only while the receiver says it has one (RMC status A,
GGA quality > 0, non-empty coordinates); otherwise ``has_fix`` is False and
the coordinates must not be used: no fabricated 0,0 after a reboot.
"""

from firmware.app.compat import days_from_civil

from protocol.codec import (
    FIX_2D, FIX_3D, FIX_DIFF, GNSS_BEIDOU, GNSS_GALILEO, GNSS_GLONASS,
    GNSS_GPS, GNSS_NAVIC, GNSS_QZSS, HDOP_UNKNOWN,
)

MAX_LINE = 96          # NMEA says 82 with CR LF; some receivers run a little over
MAX_FIELDS = 24

_DOLLAR = 0x24
_STAR = 0x2A
_COMMA = 0x2C
_DOT = 0x2E
_CR = 0x0D
_LF = 0x0A

# Talker letters packed into one int (first << 8 | second): no string slices.
_TALKER_GNSS = {
    (ord("G") << 8) | ord("P"): GNSS_GPS,
    (ord("G") << 8) | ord("L"): GNSS_GLONASS,
    (ord("G") << 8) | ord("A"): GNSS_GALILEO,
    (ord("G") << 8) | ord("B"): GNSS_BEIDOU,
    (ord("B") << 8) | ord("D"): GNSS_BEIDOU,
    (ord("G") << 8) | ord("Q"): GNSS_QZSS,
    (ord("G") << 8) | ord("N"): 0,   # combined: constellations from GSA
}
_TYPE_GGA = (ord("G") << 16) | (ord("G") << 8) | ord("A")
_TYPE_RMC = (ord("R") << 16) | (ord("M") << 8) | ord("C")
_TYPE_GSA = (ord("G") << 16) | (ord("S") << 8) | ord("A")
_TYPE_GSV = (ord("G") << 16) | (ord("S") << 8) | ord("V")
# NMEA 4.10 GSA system id -> constellation bit
_SYSTEM_ID = (0, GNSS_GPS, GNSS_GLONASS, GNSS_GALILEO, GNSS_BEIDOU, GNSS_QZSS,
              GNSS_NAVIC)


def _prn_gnss(prn):
    """Constellation of a PRN in a combined (GN) GSA without a system id."""
    if prn <= 32:
        return GNSS_GPS
    if 65 <= prn <= 96:
        return GNSS_GLONASS
    if 193 <= prn <= 200:
        return GNSS_QZSS
    if 201 <= prn <= 237 or 401 <= prn <= 437:
        return GNSS_BEIDOU
    if 301 <= prn <= 336:
        return GNSS_GALILEO
    return 0  # SBAS and unknown ranges say nothing about the fix


class NmeaParser:
    """Feed bytes; read ``has_fix``, ``lat_e7`` ... and the counters."""

    def __init__(self):
        self._line = bytearray(MAX_LINE)
        self._len = 0
        self._state = 0            # 0 idle, 1 in a line, 2 discarding
        self._fields = [0] * (MAX_FIELDS + 1)
                # counters (reported in logs and bench)
        self.sentences = 0
        self.bad_checksum = 0
        self.overlong = 0
        self.garbage = 0
        self.skipped = 0
        # fix
        self.has_fix = False
        self.fix_updates = 0       # bumps whenever a valid position is stored
        self.lat_e7 = 0
        self.lon_e7 = 0
        self.alt_m = 0
        self.speed_cms = 0
        self.course_cdeg = -1      # unknown
        self.hdop_x10 = HDOP_UNKNOWN
        self.gga_quality = 0
        self.sats = 0
        self.gsa_mode = 0
        self.gnss = 0
        self._gnss_acc = 0
        self._epoch_tod = -1
        self._talker_gnss = 0
        # time from the receiver: seconds of day and Unix seconds (RMC, valid)
        self.tod_s = -1
        self.utc_s = 0
        self.utc_updates = 0

    # ---- framing ----

    def feed(self, data, n=-1):
        """Consume ``data[:n]`` (all of it when n < 0)."""
        if n < 0:
            n = len(data)
        line = self._line
        for i in range(n):
            b = data[i]
            if b == _DOLLAR:
                if self._state == 1 and self._len > 1:
                    self.garbage += 1      # a sentence cut short by a new one
                line[0] = b
                self._len = 1
                self._state = 1
            elif b == _CR or b == _LF:
                if self._state == 1 and self._len > 1:
                    self._sentence(self._len)
                self._state = 0
                self._len = 0
            elif self._state == 1:
                if b < 0x20 or b > 0x7E:
                    self.garbage += 1
                    self._state = 2
                elif self._len >= MAX_LINE:
                    self.overlong += 1
                    self._state = 2
                else:
                    line[self._len] = b
                    self._len += 1
            # idle or discarding: drop bytes until the next '$' or line end

    # ---- sentence level ----

    def _sentence(self, n):
        line = self._line
        star = -1
        csum = 0
        fields = self._fields
        nf = 0
        fields[0] = 1
        for i in range(1, n):
            b = line[i]
            if b == _STAR:
                star = i
                break
            csum ^= b
            if b == _COMMA and nf < MAX_FIELDS:
                nf += 1
                fields[nf] = i + 1
        if star < 0 or star + 3 != n:
            self.bad_checksum += 1
            return
        want = _hex(line[star + 1]) << 4 | _hex(line[star + 2])
        if want != csum:
            self.bad_checksum += 1
            return
        # field k spans [f[k], f[k+1] - 1); missing fields are empty spans
        for k in range(nf + 1, MAX_FIELDS + 1):
            fields[k] = star + 1
        if n < 7 or line[1] == 0x50:   # 'P': proprietary
            self.skipped += 1
            return
        talker = (line[1] << 8) | line[2]
        tg = _TALKER_GNSS.get(talker)
        if tg is None:
            self.skipped += 1
            return
        stype = (line[3] << 16) | (line[4] << 8) | line[5]
        self.sentences += 1
        if stype == _TYPE_GGA:
            self._gga(tg)
        elif stype == _TYPE_RMC:
            self._rmc(tg)
        elif stype == _TYPE_GSA:
            self._gsa(tg)
        elif stype != _TYPE_GSV:
            self.skipped += 1

    def _epoch(self, k, tg):
        """Start a new receiver epoch when the time of day changes."""
        f = self._fields
        s = f[k]
        e = f[k + 1] - 1
        tod = _tod(self._line, s, e)
        if tod != self._epoch_tod:
            self._epoch_tod = tod
            self.gnss = self._gnss_acc
            self._gnss_acc = 0
            self._talker_gnss = 0
        self._talker_gnss |= tg
        return tod

    def _position(self, k):
        """Parse lat/lon at fields k..k+3 into the fix; False if empty."""
        f = self._fields
        line = self._line
        s = f[k]
        e = f[k + 1] - 1
        lat = _coord(line, s, e)
        s2 = f[k + 2]
        e2 = f[k + 3] - 1
        lon = _coord(line, s2, e2)
        if lat is None or lon is None:
            return False
        hs = f[k + 1]
        he = f[k + 2] - 1
        ws = f[k + 3]
        we = f[k + 4] - 1
        if he - hs != 1 or we - ws != 1:
            return False
        if line[hs] == 0x53:       # 'S'
            lat = -lat
        elif line[hs] != 0x4E:     # 'N'
            return False
        if line[ws] == 0x57:       # 'W'
            lon = -lon
        elif line[ws] != 0x45:     # 'E'
            return False
        if lat > 900000000 or lat < -900000000 or lon > 1800000000 or lon < -1800000000:
            return False
        self.lat_e7 = lat
        self.lon_e7 = lon
        return True

    def _gga(self, tg):
        f = self._fields
        self._epoch(1, tg)
        line = self._line
        s = f[6]
        e = f[7] - 1
        q = _uint(line, s, e)
        self.gga_quality = q if q > 0 else 0
        s = f[7]
        e = f[8] - 1
        sats = _uint(line, s, e)
        if sats >= 0:
            self.sats = sats
        s = f[8]
        e = f[9] - 1
        h = _fixed(line, s, e, 1)
        self.hdop_x10 = h if h is not None and h < HDOP_UNKNOWN else HDOP_UNKNOWN
        s = f[9]
        e = f[10] - 1
        alt = _fixed(line, s, e, 0)
        if alt is not None:
            self.alt_m = alt
        if q > 0 and self._position(2):
            self._valid()
        else:
            self.has_fix = False

    def _rmc(self, tg):
        f = self._fields
        tod = self._epoch(1, tg)
        line = self._line
        s = f[2]
        e = f[3] - 1
        ok = e - s == 1 and line[s] == 0x41        # 'A'
        s = f[12]
        e = f[13] - 1
        if e - s == 1 and line[s] == 0x4E:         # mode 'N': not valid
            ok = False
        if not ok or not self._position(3):
            self.has_fix = False
            return
        s = f[7]
        e = f[8] - 1
        knots_e3 = _fixed(line, s, e, 3)
        if knots_e3 is not None:
            self.speed_cms = knots_e3 * 1286 // 25000   # 1 kn = 51.44 cm/s
        s = f[8]
        e = f[9] - 1
        c = _fixed(line, s, e, 2)
        self.course_cdeg = c % 36000 if c is not None else -1
        s = f[9]
        e = f[10] - 1
        day = _uint(line, s, s + 2) if e - s == 6 else -1
        mon = _uint(line, s + 2, s + 4) if day > 0 else -1
        yr = _uint(line, s + 4, s + 6) if mon > 0 else -1
        if tod >= 0 and 1 <= mon <= 12 and 1 <= day <= 31 and yr >= 0:
            self.utc_s = days_from_civil(2000 + yr, mon, day) * 86400 + tod
            self.tod_s = tod
            self.utc_updates += 1
        self._valid()

    def _gsa(self, tg):
        f = self._fields
        line = self._line
        s = f[2]
        e = f[3] - 1
        mode = _uint(line, s, e)
        self.gsa_mode = mode if mode > 0 else 0
        if mode < 2:
            return
        s = f[18]
        e = f[19] - 1
        sysid = _uint(line, s, e) if e - s == 1 else -1
        if 1 <= sysid <= 6:
            self._gnss_acc |= _SYSTEM_ID[sysid]
        elif tg:
            self._gnss_acc |= tg
        else:
            for k in range(3, 15):
                s = f[k]
                e = f[k + 1] - 1
                prn = _uint(line, s, e)
                if prn > 0:
                    self._gnss_acc |= _prn_gnss(prn)
        s = f[16]
        e = f[17] - 1
        h = _fixed(line, s, e, 1)
        if h is not None and h < HDOP_UNKNOWN:
            self.hdop_x10 = h

    def _valid(self):
        self.has_fix = True
        self.fix_updates += 1

    # ---- derived ----

    def fix_type(self):
        if self.gga_quality in (2, 4, 5):
            return FIX_DIFF
        if self.gsa_mode == 3:
            return FIX_3D
        if self.gsa_mode == 2:
            return FIX_2D
        return FIX_3D if self.sats >= 4 else FIX_2D

    def gnss_mask(self):
        m = self.gnss or self._gnss_acc or self._talker_gnss
        return m & 0x3F


# ---- number parsing in place (no slices, no float) ----

def _hex(b):
    if 48 <= b <= 57:
        return b - 48
    if 65 <= b <= 70:
        return b - 55
    if 97 <= b <= 102:
        return b - 87
    return 0x100   # never matches a checksum byte


def _uint(buf, s, e):
    """Decimal digits in buf[s:e] as int; -1 if empty or not all digits."""
    if e <= s:
        return -1
    v = 0
    for i in range(s, e):
        d = buf[i] - 48
        if d < 0 or d > 9:
            return -1
        v = v * 10 + d
    return v


def _fixed(buf, s, e, decimals):
    """A signed decimal in buf[s:e] times 10**decimals, truncated; None if bad."""
    if e <= s or e - s > 12:
        return None
    neg = buf[s] == 0x2D
    if neg:
        s += 1
    v = 0
    frac = -1
    digits = 0
    for i in range(s, e):
        b = buf[i]
        if b == _DOT:
            if frac >= 0:
                return None
            frac = 0
            continue
        d = b - 48
        if d < 0 or d > 9:
            return None
        if frac >= 0:
            if frac >= decimals:
                continue
            frac += 1
        v = v * 10 + d
        digits += 1
    if digits == 0:
        return None
    if frac < 0:
        frac = 0
    while frac < decimals:
        v *= 10
        frac += 1
    return -v if neg else v


def _coord(buf, s, e):
    """(d)ddmm.mmmmm as 1e-7 degrees, or None."""
    dot = -1
    for i in range(s, e):
        if buf[i] == _DOT:
            dot = i
            break
    if dot < 0:
        dot = e
    if dot - s < 3:
        return None
    deg = _uint(buf, s, dot - 2)
    mins = _uint(buf, dot - 2, dot)
    if deg < 0 or mins < 0 or mins >= 60:
        return None
    frac = 0
    places = 0
    for i in range(dot + 1, e):
        d = buf[i] - 48
        if d < 0 or d > 9:
            return None
        if places < 5:
            frac = frac * 10 + d
            places += 1
    while places < 5:
        frac *= 10
        places += 1
    minutes_e5 = mins * 100000 + frac
    return deg * 10000000 + (minutes_e5 * 100 + 30) // 60


def _tod(buf, s, e):
    """hhmmss[.sss] as seconds of day, or -1."""
    if e - s < 6:
        return -1
    h = _uint(buf, s, s + 2)
    m = _uint(buf, s + 2, s + 4)
    sec = _uint(buf, s + 4, s + 6)
    if h < 0 or h > 23 or m < 0 or m > 59 or sec < 0 or sec > 60:
        return -1
    return h * 3600 + m * 60 + sec
