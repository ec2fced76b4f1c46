"""The board interface: everything a device reads or drives.

The app (firmware/app) touches the world only through one board object.
A board provides these attributes and methods; firmware/boards/sim.py is a
complete small example, unix.py and esp32.py the real ones.

``store``       firmware.app.store.FlashStore over the board's flash root
                (littlefs on ESP32, a directory on unix and in simulation).
``clock``       ``ticks_ms()`` a wrapping ms tick (use ticks_diff);
                ``time()`` Unix seconds (int); ``synced`` True once set from
                GNSS or NTP (records carry the unsynced flag until then);
                ``set_time(unix_s)``.
``uart``        GNSS receiver: ``readinto(buf) -> int``, never blocks,
                returns 0 when nothing is waiting.
``inputs``      ``get(name) -> int`` for "sos" (0/1), "recording" (0/1),
                "strap" (0 closed, 1 open/cut, 2 tamper), "power_off" (0/1).
``battery``     ``percent()`` 0..100 (255 unknown), ``charging()``,
                ``external()`` (bools).
``storage_free_mib()``  free recording storage (recorder), -1 unknown.
``link``        ``up() -> bool`` (network attached: WLAN associated, PPP up,
                simulated link state), ``signal_dbm() -> int`` and
                ``open(host, port, tls, timeout_ms) -> transport``.
                A transport is non-blocking: ``ready()`` True once TCP (and
                TLS) is established, False while pending, raises OSError on
                failure; ``write(mv) -> int`` bytes taken (0 if it would
                block); ``readinto(mv) -> int`` bytes read (0 if nothing),
                raises OSError when the peer closed; ``close()``. Every
                blocking step a board cannot avoid (DNS, TLS handshake) is
                bounded by ``timeout_ms``.
``watchdog``    ``start(timeout_ms)`` (cannot be stopped), ``feed()``.
``reset_cause()``  code from protocol.codec.RESET_CAUSES for this boot.
``reboot()`` / ``power_off()``  do not return on hardware.
``random8()``   a random int 0..255 (reconnect jitter).
``log(line)``   one line of text ("I ...", "W ...", "E ..." + reason).

The device is stepped by ``device.poll(now_ms)``, which returns the ms it
would like to sleep. A board's ``run()`` (unix, esp32) loops over it; the
fleet simulator calls ``poll`` itself for thousands of devices.
"""


class Inputs:
    """Named integer inputs with defaults, set by hardware or a simulator."""

    DEFAULTS = {"sos": 0, "recording": 0, "strap": 0, "power_off": 0}

    def __init__(self):
        self.values = {}
        for k in self.DEFAULTS:
            self.values[k] = self.DEFAULTS[k]

    def get(self, name):
        return self.values.get(name, 0)

    def set(self, name, value):
        self.values[name] = value


class Battery:
    def __init__(self, pct=100):
        self.pct = pct
        self.is_charging = False
        self.on_external = False

    def percent(self):
        return self.pct

    def charging(self):
        return self.is_charging

    def external(self):
        return self.on_external


class NullWatchdog:
    def start(self, timeout_ms):
        pass

    def feed(self):
        pass


class SoftWatchdog:
    """A watchdog for hosts: ``expired(now_ms)`` is checked by the main loop."""

    def __init__(self, clock):
        self.clock = clock
        self.timeout_ms = None
        self.fed_ms = 0
        self.feeds = 0

    def start(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.fed_ms = self.clock.ticks_ms()

    def feed(self):
        self.fed_ms = self.clock.ticks_ms()
        self.feeds += 1

    def expired(self, now_ms, ticks_diff):
        return self.timeout_ms is not None and ticks_diff(now_ms, self.fed_ms) > self.timeout_ms


# Control channel commands (unix board datagrams, simulators): see parse_control.
STRAP_WORDS = {"closed": 0, "close": 0, "open": 1, "cut": 1, "tamper": 2}


def parse_control(line):
    """``(name, int value)`` from one control line, or raises ValueError.

    Lines: ``sos 1``, ``recording 0``, ``strap open|closed|tamper``,
    ``link up|down``, ``battery 15``, ``charging 1``, ``external 0``,
    ``storage 120``, ``signal -95``, ``power off``, ``reboot``, ``hang``,
    ``stats`` (log heap figures).
    """
    words = line.strip().split()
    if not words or len(words) > 2:
        raise ValueError("expected 'name value'")
    name = words[0].lower()
    arg = words[1].lower() if len(words) == 2 else ""
    if name == "power" and arg == "off":
        return "power_off", 1
    if name in ("reboot", "hang", "stats"):
        return name, 1
    if name == "link":
        if arg not in ("up", "down"):
            raise ValueError("link up|down")
        return "link", 1 if arg == "up" else 0
    if name == "strap":
        if arg in STRAP_WORDS:
            return "strap", STRAP_WORDS[arg]
    if name in ("sos", "recording", "strap", "battery", "charging", "external",
                "storage", "signal", "power_off"):
        try:
            return name, int(arg)
        except ValueError:
            raise ValueError("%s needs an integer" % name)
    raise ValueError("unknown control %r" % name)


def apply_control(board, name, value):
    """Apply a parsed control line to a board with the standard parts."""
    if name in Inputs.DEFAULTS:
        board.inputs.set(name, value)
    elif name == "battery":
        board.battery.pct = value
    elif name == "charging":
        board.battery.is_charging = bool(value)
    elif name == "external":
        board.battery.on_external = bool(value)
    elif name == "storage":
        board.storage_mib = value
    elif name == "signal":
        board.link.signal = value
    elif name == "link":
        board.link.set_up(bool(value))
    else:
        return False
    return True
