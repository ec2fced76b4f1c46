"""The few things MicroPython and CPython spell differently."""

try:
    from micropython import const  # noqa: F401
except ImportError:  # CPython
    def const(x):
        return x

# CPython only: 0 = plain integers that never wrap (the default). A test sets
# it to 1 << 30 to get the arithmetic of MicroPython on a 32-bit port (ESP32):
# ticks wrap every 2**30 ms and ticks_diff is valid within +-2**29 ms (6.2
# days). sim.SimClock wraps its ticks_ms the same way. MicroPython ignores it.
TICKS_PERIOD = 0

try:
    from time import ticks_add, ticks_diff, ticks_ms  # noqa: F401
except ImportError:  # CPython
    import time as _time

    def ticks_ms():
        t = int(_time.monotonic() * 1000)
        return t & (TICKS_PERIOD - 1) if TICKS_PERIOD else t

    def ticks_add(t, delta):
        if TICKS_PERIOD:
            return (t + delta) & (TICKS_PERIOD - 1)
        return t + delta

    def ticks_diff(a, b):
        if TICKS_PERIOD:
            half = TICKS_PERIOD >> 1
            return ((a - b + half) & (TICKS_PERIOD - 1)) - half
        return a - b

try:
    from gc import mem_free as _mem_free
except ImportError:
    _mem_free = None


def mem_free():
    """Free heap bytes (0 where the interpreter does not say)."""
    return _mem_free() if _mem_free is not None else 0


def _unix_offset():
    # MicroPython's time.time() counts from 2000-01-01 on bare-metal ports
    # (time.gmtime(0)[0] == 2000), from 1970 on unix; records carry Unix time.
    import time
    if time.gmtime(0)[0] == 2000:
        return 946684800
    return 0


UNIX_OFFSET = _unix_offset()


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (no allocation)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = m + 9 if m <= 2 else m - 3
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468
