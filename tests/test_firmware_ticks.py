"""Tick wraparound as on an ESP32: ``time.ticks_ms`` wraps every 2**30 ms and
``ticks_diff`` is valid within +-2**29 ms (6.2 days). CPython's compat ticks
model that arithmetic when ``compat.TICKS_PERIOD`` is set; a simulated week
(crossing the wrap) shows that no stamp ages into it."""

import pytest

from firmware.app import compat
from firmware.app.factory import make_device
from firmware.boards.sim import NoLink, SimBoard, SimClock
from firmware.devtools import Track, provision

from .test_firmware_device import records as all_records

PERIOD = 1 << 30
WEEK_MS = 7 * 86400 * 1000
NOW = 1767225600


@pytest.fixture
def esp32_ticks(monkeypatch):
    monkeypatch.setattr(compat, "TICKS_PERIOD", PERIOD)


class SwitchLink:
    """A link that is down until ``is_up``; every connect attempt is refused."""

    signal = -90

    def __init__(self, clock):
        self.clock = clock
        self.is_up = False
        self.attempts = []

    def up(self):
        return self.is_up

    def signal_dbm(self):
        return self.signal

    def open(self, host, port, tls, timeout_ms):
        self.attempts.append(self.clock.ms)
        raise OSError(111, "refused")


def make(tmp_path, link=None):
    provision(tmp_path / "flash", "rec-tk01", "recorder",
              params={"min_period_s": 1, "gps_period_s": 1})
    # one hour before the tick counter wraps
    clock = SimClock(start_ms=PERIOD // 1000 * 1000 - 3600 * 1000, unix_s=NOW)
    board = SimBoard(str(tmp_path / "flash"), clock=clock, link=link or NoLink())
    dev = make_device(board, clock.ticks_ms())
    return board, dev


def run(board, dev, ms, step_ms, track=None):
    for _ in range(ms // step_ms):
        board.clock.advance(step_ms)
        if track is not None and board.clock.ms % 1000 == 0:
            track.step(1)
            board.uart.feed(track.sentences(board.clock.time()))
        dev.poll(board.clock.ticks_ms())


def records(dev, kind):
    return [r for r in all_records(dev) if r.kind == kind]


def test_compat_ticks_wrap_like_a_32_bit_port(esp32_ticks):
    assert compat.ticks_add(PERIOD - 10, 25) == 15
    assert compat.ticks_diff(15, PERIOD - 10) == 25
    assert compat.ticks_diff(PERIOD - 10, 15) == -25
    assert compat.ticks_diff((1 << 29) + 1, 0) < 0      # beyond the valid range
    assert 0 <= compat.ticks_ms() < PERIOD
    assert SimClock(start_ms=PERIOD + 7).ticks_ms() == 7


def test_compat_ticks_are_plain_integers_by_default():
    assert compat.TICKS_PERIOD == 0
    assert compat.ticks_add(PERIOD - 10, 25) == PERIOD + 15
    assert compat.ticks_diff(WEEK_MS, 0) == WEEK_MS


def test_a_week_without_a_fix_then_a_fix_is_recorded_promptly(tmp_path, esp32_ticks):
    board, dev = make(tmp_path)
    track = Track()
    run(board, dev, 30 * 1000, 500, track)               # fixes, then indoors
    before = len(records(dev, 1))
    assert before >= 10
    run(board, dev, WEEK_MS, 60 * 1000)                  # a week: no fix, poll each minute
    assert len(records(dev, 1)) == before
    run(board, dev, 5 * 1000, 500, track)                # back outside
    assert len(records(dev, 1)) >= before + 3
    assert dev.errors == 0
    up = [r.body["uptime_s"] for r in records(dev, 2)]
    assert up == sorted(up) and up[-1] >= WEEK_MS // 1000  # uptime keeps growing


def test_link_down_for_a_week_then_up_reconnects_promptly(tmp_path, esp32_ticks):
    link = SwitchLink(None)
    board, dev = make(tmp_path, link)
    link.clock = board.clock
    run(board, dev, WEEK_MS, 60 * 1000)
    assert link.attempts == []
    link.is_up = True
    up_at = board.clock.ms
    run(board, dev, 3000, 100)
    assert link.attempts and link.attempts[0] - up_at <= 1000
    assert dev.uptime_s >= WEEK_MS // 1000
