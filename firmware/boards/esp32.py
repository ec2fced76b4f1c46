"""ESP32 board: machine.UART, ADC, Pin, WDT, RTC; network.WLAN or PPP over a
4G modem; littlefs at "/" (the MicroPython default on ESP32).

Untested here (no hardware in CI); the pin map below is the reference
design's and lives in ``board.json`` on flash when it differs::

    {"gnss_uart": 2, "gnss_tx": 17, "gnss_rx": 16, "gnss_baud": 9600,
     "sos_pin": 0, "rec_pin": 4, "strap_pin": 5, "tamper_pin": 18,
     "power_pin": 19, "charge_pin": 21, "ext_pin": 22, "batt_adc": 34,
     "net": "wlan" | "ppp", "wlan_ssid": "...", "wlan_key": "...",
     "modem_uart": 1, "modem_tx": 26, "modem_rx": 27, "modem_baud": 115200,
     "apn": "internet"}

Inputs are active low with pull-ups. The battery is read through a 1:2
divider on an ADC pin (11 dB attenuation) and mapped linearly 3.3-4.2 V to
0-100 %. ``storage_free_mib`` is the SD card of the recorder's camera, or
-1 where there is none.
"""

import json
import time

import machine
import network

from firmware.app.compat import UNIX_OFFSET, ticks_diff, ticks_ms
from firmware.app.store import FlashStore
from firmware.boards.base import Inputs
from firmware.boards.tcplink import TcpLink

DEFAULT_PINS = {
    "gnss_uart": 2, "gnss_tx": 17, "gnss_rx": 16, "gnss_baud": 9600,
    "sos_pin": 0, "rec_pin": 4, "strap_pin": 5, "tamper_pin": 18, "power_pin": 19,
    "charge_pin": 21, "ext_pin": 22, "batt_adc": 34, "net": "wlan",
    "wlan_ssid": "", "wlan_key": "", "modem_uart": 1, "modem_tx": 26, "modem_rx": 27,
    "modem_baud": 115200, "apn": "internet",
}
_RESET = {machine.PWRON_RESET: 0, machine.HARD_RESET: 1, machine.WDT_RESET: 2,
          machine.DEEPSLEEP_RESET: 3, machine.SOFT_RESET: 4}


class Esp32Clock:
    def __init__(self):
        self.synced = False       # the RTC is set from GNSS (or NTP) first
        self._rtc = machine.RTC()

    def ticks_ms(self):
        return ticks_ms()

    def time(self):
        return time.time() + UNIX_OFFSET

    def set_time(self, unix_s):
        t = time.gmtime(unix_s - UNIX_OFFSET)
        self._rtc.datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))
        self.synced = True


class Esp32Uart:
    def __init__(self, pins):
        self.uart = machine.UART(pins["gnss_uart"], baudrate=pins["gnss_baud"],
                                 tx=pins["gnss_tx"], rx=pins["gnss_rx"], rxbuf=1024,
                                 timeout=0)

    def readinto(self, buf):
        if not self.uart.any():
            return 0
        return self.uart.readinto(buf) or 0


class PinInputs(Inputs):
    def __init__(self, pins):
        super().__init__()
        up = machine.Pin.PULL_UP
        self._pins = {}
        for name, key in (("sos", "sos_pin"), ("recording", "rec_pin"),
                          ("strap_open", "strap_pin"), ("tamper", "tamper_pin"),
                          ("power_off", "power_pin")):
            self._pins[name] = machine.Pin(pins[key], machine.Pin.IN, up)

    def get(self, name):
        if name == "strap":
            if not self._pins["tamper"].value():
                return 2
            return 0 if not self._pins["strap_open"].value() else 1  # loop closed = low
        pin = self._pins.get(name)
        return (0 if pin.value() else 1) if pin is not None else 0


class AdcBattery:
    def __init__(self, pins):
        self.adc = machine.ADC(machine.Pin(pins["batt_adc"]))
        self.adc.atten(machine.ADC.ATTN_11DB)
        self.charge = machine.Pin(pins["charge_pin"], machine.Pin.IN, machine.Pin.PULL_UP)
        self.ext = machine.Pin(pins["ext_pin"], machine.Pin.IN, machine.Pin.PULL_UP)

    def percent(self):
        mv = self.adc.read_uv() // 500          # divider 1:2 -> battery millivolts
        return max(0, min(100, (mv - 3300) * 100 // 900))

    def charging(self):
        return not self.charge.value()

    def external(self):
        return not self.ext.value()


class WlanLink(TcpLink):
    def __init__(self, pins):
        super().__init__("")
        self.wlan = network.WLAN(network.STA_IF)
        self.wlan.active(True)
        self.wlan.connect(pins["wlan_ssid"], pins["wlan_key"])   # returns at once

    def up(self):
        return self.wlan.isconnected()

    def signal_dbm(self):
        try:
            return self.wlan.status("rssi")
        except (OSError, ValueError):
            return -128


class PppLink(TcpLink):
    """PPP over a 4G modem on a UART (AT dial, then network.PPP).

    A modem that was not registered yet, or lost its data call, is dialled
    again after REDIAL_MS without a link. A redial blocks about 3 s (escape
    guard times, hang-up, dial): inside the watchdog period, though the GNSS
    UART's 1 KiB buffer may overflow meanwhile (a few sentences lost)."""

    REDIAL_MS = 120000

    def __init__(self, pins):
        super().__init__("")
        self.apn = pins["apn"].encode()
        self.uart = machine.UART(pins["modem_uart"], baudrate=pins["modem_baud"],
                                 tx=pins["modem_tx"], rx=pins["modem_rx"], timeout=200)
        self.ppp = None
        self._down_since = ticks_ms()
        self._dial()

    def _dial(self):
        if self.ppp is not None:
            self.ppp.active(False)
            time.sleep_ms(1000)       # guard time, then "+++" back to command mode
            self.uart.write(b"+++")
            time.sleep_ms(1000)
        for cmd in (b"AT\r", b"ATH\r", b'AT+CGDCONT=1,"IP","%s"\r' % self.apn,
                    b"ATD*99#\r"):
            self.uart.write(cmd)
            time.sleep_ms(300)
            self.uart.read()
        self.ppp = network.PPP(self.uart)
        self.ppp.active(True)
        self.ppp.connect()

    def up(self):
        now = ticks_ms()
        if self.ppp.isconnected():
            self._down_since = now
            return True
        if ticks_diff(now, self._down_since) >= self.REDIAL_MS:
            self._down_since = now
            self._dial()
        return False

    def signal_dbm(self):
        return -128                   # unknown: AT+CSQ needs the AT channel, busy with PPP


class HwWatchdog:
    def __init__(self):
        self.wdt = None

    def start(self, timeout_ms):
        self.wdt = machine.WDT(timeout=timeout_ms)

    def feed(self):
        if self.wdt is not None:
            self.wdt.feed()


class Esp32Board:
    def __init__(self):
        self.store = FlashStore("/data")
        pins = dict(DEFAULT_PINS)
        raw = self.store.read("board.json", 2048)
        if raw:
            try:
                pins.update(json.loads(raw))
            except ValueError:
                print("W board.json malformed: default pin map")
        self.clock = Esp32Clock()
        self.uart = Esp32Uart(pins)
        self.inputs = PinInputs(pins)
        self.battery = AdcBattery(pins)
        self.link = PppLink(pins) if pins["net"] == "ppp" else WlanLink(pins)
        self.link.base_dir = "/data"
        self.watchdog = HwWatchdog()

    def reset_cause(self):
        return _RESET.get(machine.reset_cause(), 255)

    def storage_free_mib(self):
        return -1

    def random8(self):
        import os
        return os.urandom(1)[0]

    def log(self, line):
        print(line)

    def reboot(self):
        machine.reset()

    def power_off(self):
        machine.deepsleep()           # the power button's pin wakes it

    def run(self, device):
        while True:
            now = ticks_ms()
            delay = device.poll(now)
            # light sleep and the watchdog do not mix well: idle, don't sleep
            end = ticks_diff(ticks_ms(), now)
            if delay > end:
                time.sleep_ms(min(delay - end, 50))


def main():
    from firmware.app.factory import make_device
    try:
        board = Esp32Board()
    except Exception as e:  # noqa: BLE001 - a field device must not sit at the REPL
        print("E board:", e, "- resetting in 60 s")
        time.sleep(60)                # a window to reach the REPL (Ctrl-C) on the bench
        machine.reset()
    board.run(make_device(board, ticks_ms()))
