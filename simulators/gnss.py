"""A virtual GNSS receiver: NMEA 0183 at 1 Hz from a route, with a real receiver's flaws.

``GnssReceiver(route, seed, config)`` is the pure-ish core: call
``sentences(now)`` (or ``read(now)`` for one byte string) once per second with
a non-decreasing Unix time and it returns what a receiver would put on its
UART in that second: RMC, GGA, GSA per constellation, GSV every few seconds,
and now and then a proprietary ``$PSRFEPE`` sentence. The same route, seed,
config and sequence of calls give the same bytes.

Imperfection, modelled on the captures in ``/work/shared/data/nmea``:

* power-on garbage (non-NMEA bytes before the first ``$``), empty time fields
  for the first seconds, then time but no fix until the time to first fix
  (20–40 s cold, a few seconds warm or hot);
* indoors: no fix — RMC status ``V``, GGA quality ``0``, empty position fields
  (never ``0,0``), satellites in view without signal; a few seconds to
  reacquire after going outside;
* satellites rising and setting, SNRs and the used count varying with a slowly
  changing sky openness (urban canyons), HDOP following the used count;
* a horizontal error of a few metres that wanders slowly, plus speed and
  course noise; course left empty when standing still (as u-blox does);
* now and then a few stray bytes between sentences (``garbage_rate`` per
  second), and optional bit errors on the line (a sentence with a bad
  checksum, ``corrupt_rate`` per sentence).

Talker modes: ``GN`` (combined GPS + BeiDou: ``GNRMC``/``GNGGA``, ``GPGSA`` +
``BDGSA``, ``GPGSV`` + ``BDGSV``), ``GP`` (GPS only) and ``BD`` (BeiDou only,
``BDRMC``/``BDGGA``...). ``beidou_talker="GB"`` uses the NMEA 4.x talker for
BeiDou sentences instead of ``BD``, with PRNs 201+ as the SiRF capture does.

Outputs: bytes in process (``read``), or ``GnssFeeder`` writing to a serial
port or pseudo-terminal in real time (``python -m simulators gnss``).
"""

from __future__ import annotations

import fcntl
import math
import os
import random
import select
import struct
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from simulators.routes import M_PER_DEG_LAT, M_PER_DEG_LON, Route, RoutePoint

TALKERS = ("GN", "GP", "BD")
BEIDOU_TALKERS = ("BD", "GB")
START_MODES = ("cold", "warm", "hot")
KNOTS_PER_MS = 1.0 / 0.514444
GEOID_SEPARATION_M = 5.6   # EGM96 geoid height near Zhucheng, roughly
MIN_SNR_TRACKED = 20
MIN_ELEVATION_USED = 10.0
MAX_EPOCHS = 30 * 86_400   # a feeder never runs longer than 30 days
SKY_REFRESH_S = 5


@dataclass(frozen=True)
class GnssConfig:
    """How the receiver talks and how imperfect it is. Ranges are (low, high) seconds."""

    talker: str = "GN"
    beidou_talker: str = "BD"
    cold_start_s: tuple[float, float] = (20.0, 40.0)
    warm_start_s: tuple[float, float] = (5.0, 15.0)
    hot_start_s: tuple[float, float] = (1.0, 3.0)
    time_unknown_s: tuple[float, float] = (2.0, 6.0)
    reacquire_s: tuple[float, float] = (2.0, 8.0)
    gsv_period_s: int = 5
    proprietary_period_s: int = 10
    corrupt_rate: float = 0.0
    garbage_rate: float = 0.005
    power_on_garbage: bool = True
    noise_m: float = 2.0

    def __post_init__(self) -> None:
        if self.talker not in TALKERS:
            raise ValueError("talker must be one of %s, got %r" % (TALKERS, self.talker))
        if self.beidou_talker not in BEIDOU_TALKERS:
            raise ValueError("beidou_talker must be one of %s, got %r"
                             % (BEIDOU_TALKERS, self.beidou_talker))
        for name in ("cold_start_s", "warm_start_s", "hot_start_s", "time_unknown_s",
                     "reacquire_s"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 3600:
                raise ValueError("%s must be 0 <= low <= high <= 3600, got %r"
                                 % (name, (lo, hi)))
        if not 1 <= self.gsv_period_s <= 3600:
            raise ValueError("gsv_period_s must be 1..3600")
        if not 0 <= self.proprietary_period_s <= 3600:
            raise ValueError("proprietary_period_s must be 0 (never) .. 3600")
        if not 0.0 <= self.corrupt_rate <= 1.0:
            raise ValueError("corrupt_rate must be within [0, 1]")
        if not 0.0 <= self.garbage_rate <= 1.0:
            raise ValueError("garbage_rate must be within [0, 1]")
        if not 0.0 <= self.noise_m <= 100.0:
            raise ValueError("noise_m must be within [0, 100]")

    @property
    def systems(self) -> tuple[str, ...]:
        """Constellations tracked: 'GP' (GPS) and/or 'BD' (BeiDou)."""
        if self.talker == "GN":
            return ("GP", "BD")
        return (self.talker,)


@dataclass(frozen=True)
class Satellite:
    system: str          # "GP" or "BD"
    prn: int             # as printed in GSV/GSA
    elevation: int       # degrees
    azimuth: int         # degrees
    snr: int | None      # dB-Hz, None when not tracked


@dataclass(frozen=True)
class Epoch:
    """The receiver's solution for one second, and the truth it came from."""

    unix_s: int
    time_valid: bool
    fix: bool
    lat: float | None
    lon: float | None
    alt_m: float | None
    speed_ms: float | None
    course_deg: float | None
    hdop: float | None
    pdop: float | None
    vdop: float | None
    sats_used: int
    satellites: tuple[Satellite, ...]
    used: tuple[Satellite, ...]
    truth: RoutePoint


def checksum(body: bytes) -> int:
    """XOR of the bytes between ``$`` and ``*``."""
    c = 0
    for b in body:
        c ^= b
    return c


def sentence(fields: list[str]) -> bytes:
    """``$f0,f1,...*CS\\r\\n`` with the checksum."""
    body = ",".join(fields).encode("ascii")
    return b"$%s*%02X\r\n" % (body, checksum(body))


def format_lat(lat: float) -> tuple[str, str]:
    hemi = "N" if lat >= 0 else "S"
    a = abs(lat)
    deg = int(a)
    minutes = (a - deg) * 60.0
    if round(minutes, 5) >= 60.0:
        deg, minutes = deg + 1, 0.0
    return "%02d%08.5f" % (deg, minutes), hemi


def format_lon(lon: float) -> tuple[str, str]:
    hemi = "E" if lon >= 0 else "W"
    a = abs(lon)
    deg = int(a)
    minutes = (a - deg) * 60.0
    if round(minutes, 5) >= 60.0:
        deg, minutes = deg + 1, 0.0
    return "%03d%08.5f" % (deg, minutes), hemi


@dataclass(frozen=True)
class _SkySat:
    system: str
    prn: int
    elev0: float
    elev_amp: float
    elev_period_s: float
    phase: float
    az0: float
    az_rate: float   # degrees per second
    snr_bias: float

    def position(self, t: float) -> tuple[float, float]:
        el = self.elev0 + self.elev_amp * math.sin(2 * math.pi * t / self.elev_period_s
                                                    + self.phase)
        return el, (self.az0 + self.az_rate * t) % 360.0


def _make_sky(rng: random.Random, systems: tuple[str, ...], beidou_talker: str) -> list[_SkySat]:
    sky: list[_SkySat] = []
    for system in systems:
        if system == "GP":
            prns = rng.sample(range(1, 33), 14)
        else:
            prns = rng.sample(range(6, 38), 10) + [1, 2, 3]   # MEO/IGSO + three GEOs
        for prn in prns:
            geo = system == "BD" and prn <= 5
            printed = prn + 200 if (system == "BD" and beidou_talker == "GB") else prn
            sky.append(_SkySat(
                system, printed,
                elev0=rng.uniform(35, 50) if geo else rng.uniform(-15, 70),
                elev_amp=0.5 if geo else rng.uniform(10, 30),
                elev_period_s=rng.uniform(4, 8) * 3600,
                phase=rng.uniform(0, 2 * math.pi),
                az0=rng.uniform(100, 240) if geo else rng.uniform(0, 360),
                az_rate=0.0 if geo else rng.uniform(-0.01, 0.01),
                snr_bias=rng.uniform(-4, 4)))
    return sky


class _Smooth:
    """A deterministic smooth random process in about [-1, 1]: a few sinusoids."""

    def __init__(self, rng: random.Random, min_period_s: float, max_period_s: float,
                 n: int = 3) -> None:
        self.terms = [(rng.uniform(0.5, 1.0), rng.uniform(min_period_s, max_period_s),
                       rng.uniform(0, 2 * math.pi)) for _ in range(n)]
        self.norm = sum(a for a, _, _ in self.terms)

    def __call__(self, t: float) -> float:
        return sum(a * math.sin(2 * math.pi * t / p + ph) for a, p, ph in self.terms) / self.norm


class GnssReceiver:
    """One receiver on one wearer. Call ``sentences(now)`` once per second, ``now`` rising.

    ``route_start`` is the Unix time at which the route's ``t`` is 0 (the default
    is the time of the first call). The receiver powers on at its first call
    (cold start) unless ``power_on`` was called before.
    """

    def __init__(self, route: Route, seed: int, config: GnssConfig | None = None,
                 route_start: float | None = None) -> None:
        self.route = route
        self.seed = seed
        self.config = config or GnssConfig()
        self.route_start = route_start
        sky_rng = random.Random("sky:%d" % seed)
        self._sky = _make_sky(sky_rng, self.config.systems, self.config.beidou_talker)
        self._openness = _Smooth(sky_rng, 40, 600)
        self._err_e = _Smooth(sky_rng, 30, 400)
        self._err_n = _Smooth(sky_rng, 30, 400)
        self._err_u = _Smooth(sky_rng, 60, 600)
        self._rng = random.Random("rx:%d" % seed)
        self._on_at: float | None = None
        self._time_known_at = 0.0
        self._fix_after = 0.0
        self._was_indoors = False
        self._garbage_pending = False
        self._last_now: float | None = None
        self._sky_key: tuple[int, bool, bool, int] | None = None
        self._sky_now: tuple[tuple[Satellite, ...], tuple[Satellite, ...]] = ((), ())
        self.epochs = 0
        self.corrupted = 0
        self.garbage_bursts = 0

    # -- power -------------------------------------------------------------

    def power_on(self, now: float, start: str = "cold") -> None:
        """Power the receiver on (or reset it) at ``now``: cold, warm or hot start."""
        if start not in START_MODES:
            raise ValueError("start must be one of %s, got %r" % (START_MODES, start))
        cfg = self.config
        rng = self._rng
        self._on_at = now
        ttff = {"cold": cfg.cold_start_s, "warm": cfg.warm_start_s,
                "hot": cfg.hot_start_s}[start]
        self._fix_after = now + rng.uniform(*ttff)
        # time is known from the first satellite's navigation message, never after the fix
        self._time_known_at = min(self._fix_after, now + (
            rng.uniform(*cfg.time_unknown_s) if start == "cold" else 0))
        self._garbage_pending = cfg.power_on_garbage
        self._was_indoors = False
        self._last_now = None
        if self.route_start is None:
            self.route_start = now

    def power_off(self) -> None:
        self._on_at = None

    @property
    def powered(self) -> bool:
        return self._on_at is not None

    # -- the solution -------------------------------------------------------

    def epoch(self, now: float) -> Epoch:
        """The solution at whole second ``floor(now)``; advances the receiver's state."""
        if self._on_at is None:
            self.power_on(now)
        if self._last_now is not None and now < self._last_now:
            raise ValueError("time went backwards: %r < %r" % (now, self._last_now))
        self._last_now = now
        assert self.route_start is not None   # set by power_on
        sec = int(now)
        t_route = now - self.route_start
        truth = self.route.at(t_route)
        rng = self._rng
        cfg = self.config
        self.epochs += 1

        indoors = truth.indoors
        if self._was_indoors and not indoors:
            self._fix_after = max(self._fix_after, now + rng.uniform(*cfg.reacquire_s))
        self._was_indoors = indoors

        acquiring = now < self._fix_after
        open_sky = 0.0 if indoors else 0.7 + 0.3 * self._openness(t_route)
        if acquiring and not indoors:
            # signals come up one by one while searching
            span = max(1.0, self._fix_after - (self._on_at or now))
            open_sky *= min(1.0, 0.3 + 0.7 * (1.0 - (self._fix_after - now) / span))
        # The sky changes slowly: satellites, SNRs and the used set are recomputed
        # every SKY_REFRESH_S seconds, or at once when the reception state changes.
        key = (sec // SKY_REFRESH_S, indoors, acquiring and not indoors,
               int(open_sky * 10) if acquiring else -1)
        if key != self._sky_key:
            self._sky_key = key
            self._sky_now = self._sky_state(t_route, open_sky)
        sats, used = self._sky_now
        fix = (not indoors) and (not acquiring) and len(used) >= 4
        time_valid = now >= self._time_known_at
        if not fix:
            return Epoch(sec, time_valid, False, None, None, None, None, None, None, None,
                         None, 0, sats, (), truth)
        n = len(used)
        hdop = round(0.55 + 5.0 / (n - 2) + 0.3 * max(0.0, -self._openness(t_route))
                     + abs(rng.gauss(0, 0.05)), 1)
        pdop = round(hdop * 1.7, 1)
        vdop = round(hdop * 1.35, 1)
        sigma = cfg.noise_m * hdop
        de = sigma * (0.8 * self._err_e(t_route) + 0.2 * rng.gauss(0, 1))
        dn = sigma * (0.8 * self._err_n(t_route) + 0.2 * rng.gauss(0, 1))
        du = 1.8 * sigma * (0.8 * self._err_u(t_route) + 0.2 * rng.gauss(0, 1))
        lat = truth.lat + dn / M_PER_DEG_LAT
        lon = truth.lon + de / M_PER_DEG_LON
        speed = max(0.0, truth.speed_ms + rng.gauss(0, 0.08) if truth.speed_ms > 0
                    else abs(rng.gauss(0, 0.05)))
        course: float | None = None
        if speed >= 0.3:
            course = (truth.course_deg + rng.gauss(0, 2.0 if truth.speed_ms > 3 else 6.0)) % 360
        return Epoch(sec, True, True, lat, lon, truth.alt_m + du, speed, course, hdop, pdop,
                     vdop, n, sats, used, truth)

    def _sky_state(self, t_route: float, open_sky: float
                   ) -> tuple[tuple[Satellite, ...], tuple[Satellite, ...]]:
        rng = self._rng
        sats: list[Satellite] = []
        for s in self._sky:
            el, az = s.position(t_route)
            if el < 5:
                continue
            snr: int | None = None
            if open_sky > 0:
                # low satellites are the first to be blocked by buildings
                block = (1.0 - open_sky) * (90.0 - el) / 12.0
                v = 18.0 + 0.35 * el + s.snr_bias - block + rng.uniform(-2.5, 2.5)
                if v >= MIN_SNR_TRACKED:
                    snr = min(50, int(v))
            elif rng.random() < 0.1:
                snr = rng.randint(12, 19)   # a glimmer through a window, not usable
            sats.append(Satellite(s.system, s.prn, int(el), int(az), snr))
        usable = sorted((s for s in sats if s.snr is not None and s.snr >= MIN_SNR_TRACKED
                         and s.elevation >= MIN_ELEVATION_USED),
                        key=lambda s: -(s.snr or 0))
        used: tuple[Satellite, ...] = ()
        for system in self.config.systems:
            used += tuple(s for s in usable if s.system == system)[:12]
        return tuple(sats), used

    # -- NMEA --------------------------------------------------------------

    def _talker_for(self, system: str) -> str:
        return self.config.beidou_talker if system == "BD" else "GP"

    def nmea(self, ep: Epoch) -> list[bytes]:
        """The sentences of one epoch, without line noise."""
        cfg = self.config
        main = cfg.talker if cfg.talker != "BD" else cfg.beidou_talker
        tm = dt = ""
        if ep.time_valid:
            g = time.gmtime(ep.unix_s)
            tm = "%02d%02d%02d.00" % (g.tm_hour, g.tm_min, g.tm_sec)
            dt = "%02d%02d%02d" % (g.tm_mday, g.tm_mon, g.tm_year % 100)
        out: list[bytes] = []
        if ep.fix:
            assert ep.lat is not None and ep.lon is not None and ep.alt_m is not None
            la, ns = format_lat(ep.lat)
            lo, ew = format_lon(ep.lon)
            kn = "%.3f" % ((ep.speed_ms or 0.0) * KNOTS_PER_MS)
            crs = "%.2f" % ep.course_deg if ep.course_deg is not None else ""
            out.append(sentence([main + "RMC", tm, "A", la, ns, lo, ew, kn, crs, dt, "", "",
                                 "A"]))
            out.append(sentence([main + "GGA", tm, la, ns, lo, ew, "1", "%02d" % ep.sats_used,
                                 "%.1f" % (ep.hdop or 0.0), "%.1f" % (ep.alt_m
                                                                     - GEOID_SEPARATION_M),
                                 "M", "%.1f" % GEOID_SEPARATION_M, "M", "", ""]))
        else:
            out.append(sentence([main + "RMC", tm, "V", "", "", "", "", "", "", dt, "", "",
                                 "N"]))
            out.append(sentence([main + "GGA", tm, "", "", "", "", "0", "00", "99.99", "", "",
                                 "", "", "", ""]))
        for system in cfg.systems:
            ids = ["%02d" % s.prn for s in ep.used if s.system == system]
            ids += [""] * (12 - len(ids))
            if ep.fix:
                dops = ["%.1f" % (ep.pdop or 0.0), "%.1f" % (ep.hdop or 0.0),
                        "%.1f" % (ep.vdop or 0.0)]
                mode = "3"
            else:
                dops = ["99.99", "99.99", "99.99"]
                mode = "1"
            out.append(sentence([self._talker_for(system) + "GSA", "A", mode, *ids, *dops]))
        if ep.unix_s % cfg.gsv_period_s == 0:
            for system in cfg.systems:
                out.extend(self._gsv(system, [s for s in ep.satellites if s.system == system]))
        if cfg.proprietary_period_s and ep.unix_s % cfg.proprietary_period_s == 0:
            out.append(sentence(["PSRFEPE", tm, "A" if ep.fix else "V",
                                 "%.1f" % (ep.hdop or 0.0) if ep.fix else "", "", "", "", ""]))
        return out

    def _gsv(self, system: str, sats: list[Satellite]) -> list[bytes]:
        talker = self._talker_for(system) + "GSV"
        if not sats:
            return [sentence([talker, "1", "1", "00"])]
        pages = (len(sats) + 3) // 4
        out = []
        for p in range(pages):
            f = [talker, str(pages), str(p + 1), "%02d" % len(sats)]
            for s in sats[p * 4:p * 4 + 4]:
                f += ["%02d" % s.prn, "%02d" % s.elevation, "%03d" % s.azimuth,
                      "%02d" % s.snr if s.snr is not None else ""]
            out.append(sentence(f))
        return out

    def sentences(self, now: float) -> list[bytes]:
        """What the receiver sends in the second starting at ``now``, line noise included.

        The first chunk after power-on may be garbage without a ``$``, and with
        ``garbage_rate`` a few stray bytes may sit between two sentences; with
        ``corrupt_rate`` some sentences carry a flipped bit (bad checksum).
        """
        out = self.nmea(self.epoch(now))
        if self.config.corrupt_rate > 0:
            for i, s in enumerate(out):
                if self._rng.random() < self.config.corrupt_rate:
                    out[i] = _flip_bit(s, self._rng)
                    self.corrupted += 1
        if self._garbage_pending:
            self._garbage_pending = False
            out.insert(0, power_on_garbage(self._rng))
        elif self.config.garbage_rate > 0 and self._rng.random() < self.config.garbage_rate:
            # line noise between two sentences: a few stray bytes, no '$', CR or LF
            out.insert(self._rng.randrange(len(out) + 1), power_on_garbage(self._rng, 6))
            self.garbage_bursts += 1
        return out

    def read(self, now: float) -> bytes:
        """``sentences(now)`` as one byte string, as a UART would deliver it."""
        return b"".join(self.sentences(now))


def power_on_garbage(rng: random.Random, n: int | None = None) -> bytes:
    """Bytes a receiver emits while its UART settles: no ``$``, CR or LF."""
    k = n if n is not None else rng.randint(8, 48)
    return bytes(b for b in (rng.randrange(256) for _ in range(k)) if b not in b"$\r\n")


def _flip_bit(s: bytes, rng: random.Random) -> bytes:
    """One bit error inside the sentence body (between ``$`` and ``*``)."""
    star = s.rfind(b"*")
    if star < 2:
        return s
    i = rng.randrange(1, star)
    b = bytearray(s)
    for _ in range(8):
        bit = 1 << rng.randrange(7)
        v = b[i] ^ bit
        if v not in b"$*\r\n" and v >= 0x20:
            b[i] = v
            return bytes(b)
    return s


# ---- an in-process UART ------------------------------------------------------

class GnssUart:
    """The receiver seen from a CPython simulated board: a ``machine.UART``-like RX side.

    ``advance(now)`` lets the receiver emit every whole second up to ``now``
    (at most ``max_catch_up_s`` of them after a pause); the board then reads
    with ``any()``, ``read()``, ``readline()`` or ``readinto()``. The RX buffer
    is bounded like a real UART's: bytes arriving into a full buffer are
    dropped and counted in ``overflow_bytes``. While ``powered`` is false
    (GNSS power off, device asleep) nothing arrives.
    """

    def __init__(self, receiver: GnssReceiver, rxbuf: int = 4096, max_catch_up_s: int = 5
                 ) -> None:
        if not 64 <= rxbuf <= 1 << 20:
            raise ValueError("rxbuf must be 64 bytes .. 1 MiB")
        self.receiver = receiver
        self.rxbuf = rxbuf
        self.max_catch_up_s = max(1, max_catch_up_s)
        self.powered = True
        self._buf = bytearray()
        self._next_s: int | None = None
        self.overflow_bytes = 0

    def advance(self, now: float) -> int:
        """Emit the epochs due by ``now``; returns how many bytes arrived."""
        sec = int(now)
        if self._next_s is None or sec - self._next_s >= self.max_catch_up_s:
            self._next_s = sec - (0 if self._next_s is None else self.max_catch_up_s - 1)
        n = 0
        while self._next_s <= sec:
            if self.powered:
                n += self._arrive(self.receiver.read(float(self._next_s)))
            self._next_s += 1
        return n

    def _arrive(self, data: bytes) -> int:
        room = self.rxbuf - len(self._buf)
        if len(data) > room:
            self.overflow_bytes += len(data) - max(0, room)
            data = data[:max(0, room)]
        self._buf += data
        return len(data)

    def any(self) -> int:
        return len(self._buf)

    def read(self, n: int | None = None) -> bytes | None:
        if not self._buf:
            return None
        k = len(self._buf) if n is None else min(n, len(self._buf))
        out = bytes(self._buf[:k])
        del self._buf[:k]
        return out

    def readline(self) -> bytes | None:
        i = self._buf.find(b"\n")
        return self.read(i + 1 if i >= 0 else None)

    def readinto(self, buf: bytearray | memoryview) -> int | None:
        data = self.read(len(buf))
        if data is None:
            return None
        buf[:len(data)] = data
        return len(data)


# ---- sinks and the feeder --------------------------------------------------

class Sink(Protocol):
    def write(self, data: bytes) -> int:
        """Write ``data``; returns how many bytes were written (the rest is dropped)."""
        ...

    def close(self) -> None:
        ...


class SerialSink:
    """A serial port (USB-serial adapter, or a pty slave another program made) via pyserial."""

    def __init__(self, path: str, baudrate: int = 9600, write_timeout_s: float = 1.0) -> None:
        import serial  # pyserial

        self.port = serial.Serial(path, baudrate=baudrate, timeout=1.0,
                                  write_timeout=write_timeout_s)
        self._timeout_exc = serial.SerialTimeoutException

    def write(self, data: bytes) -> int:
        try:
            n = self.port.write(data)
        except self._timeout_exc:
            return 0
        return int(n or 0)

    def close(self) -> None:
        self.port.close()


class FdSink:
    """A file descriptor (the master side of a pty): non-blocking writes with a timeout.

    A reader that does not keep up loses bytes, as on a real UART; the loss is
    returned by ``write`` and counted by the feeder.
    """

    def __init__(self, fd: int, write_timeout_s: float = 1.0, close_fds: tuple[int, ...] = ()
                 ) -> None:
        self.fd = fd
        self.write_timeout_s = write_timeout_s
        self._close_fds = close_fds
        os.set_blocking(fd, False)

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        done = 0
        deadline = time.monotonic() + self.write_timeout_s
        while done < len(view):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _, w, _ = select.select([], [self.fd], [], left)
            if not w:
                break
            try:
                done += os.write(self.fd, view[done:])
            except BlockingIOError:
                continue
            except OSError:   # EIO: the other side is gone
                break
        return done

    def close(self, drain_s: float = 1.0) -> None:
        """Close, first giving a reader up to ``drain_s`` to take what is still queued
        (bytes unread on a pty slave are discarded when the master closes)."""
        deadline = time.monotonic() + drain_s
        for fd in self._close_fds:
            while time.monotonic() < deadline:
                try:
                    pending = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD,
                                                             b"\0\0\0\0"))[0]
                except OSError:
                    break
                if pending == 0:
                    break
                time.sleep(0.01)
        for fd in (self.fd, *self._close_fds):
            try:
                os.close(fd)
            except OSError:
                pass


class MemorySink:
    """Collects bytes in memory, up to ``limit`` (then drops and counts)."""

    def __init__(self, limit: int = 16 * 1024 * 1024) -> None:
        self.buf = bytearray()
        self.limit = limit

    def write(self, data: bytes) -> int:
        room = max(0, self.limit - len(self.buf))
        self.buf += data[:room]
        return min(room, len(data))

    def close(self) -> None:
        pass


def open_pty_pair() -> tuple[int, str, int]:
    """A raw pseudo-terminal pair: (master fd, slave path, slave fd kept open).

    The slave fd is held so that writes to the master do not fail before a
    consumer opens the slave path; close both with ``FdSink(..., close_fds=)``.
    """
    master, slave = os.openpty()
    tty.setraw(slave)
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    return master, os.ttyname(slave), slave


@dataclass
class FeedStats:
    epochs: int = 0
    bytes_written: int = 0
    bytes_dropped: int = 0
    started_at: float = 0.0
    errors: list[str] = field(default_factory=list)


class GnssFeeder:
    """Writes a receiver's output to a serial port or pty, one epoch per second.

    ``GnssFeeder("/dev/ttyUSB0", receiver).run(3600)`` for a bench device;
    ``GnssFeeder(None, receiver, sink=FdSink(master_fd))`` for a pty master.
    """

    def __init__(self, port_path: str | None, receiver: GnssReceiver, baudrate: int = 9600,
                 sink: Sink | None = None) -> None:
        if sink is None:
            if port_path is None:
                raise ValueError("give a port path or a sink")
            sink = SerialSink(port_path, baudrate)
        self.sink = sink
        self.receiver = receiver
        self.stats = FeedStats()

    def run(self, duration_s: float, stop: threading.Event | None = None,
            realtime: bool = True, start_unix: float | None = None,
            clock: Callable[[], float] = time.time,
            on_epoch: Callable[[int, bytes], None] | None = None) -> FeedStats:
        """Feed for ``duration_s`` seconds (bounded), or until ``stop`` is set.

        Real time: each epoch is written at the top of a wall-clock second.
        Otherwise epochs are written back to back from ``start_unix`` (default
        now), which is what files and tests want.
        """
        if not 0 < duration_s <= MAX_EPOCHS:
            raise ValueError("duration_s must be within (0, %d]" % MAX_EPOCHS)
        stop = stop or threading.Event()
        n = int(math.ceil(duration_s))
        t0 = float(int(start_unix if start_unix is not None else clock()))
        self.stats.started_at = t0
        for i in range(n):
            if stop.is_set():
                break
            if realtime:
                now = float(int(clock()) + 1)
                if stop.wait(max(0.0, now - clock())):
                    break
            else:
                now = t0 + i
            data = self.receiver.read(now)
            written = self.sink.write(data)
            self.stats.epochs += 1
            self.stats.bytes_written += written
            self.stats.bytes_dropped += len(data) - written
            if on_epoch is not None:
                on_epoch(int(now), data)
        return self.stats

    def close(self) -> None:
        self.sink.close()
