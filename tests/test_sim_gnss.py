"""The virtual GNSS receiver, checked with a small independent NMEA reader."""

from __future__ import annotations

import os
import re
import threading
from functools import reduce
from pathlib import Path

import pytest
import serial

from simulators.gnss import (
    FdSink, GnssConfig, GnssFeeder, GnssReceiver, GnssUart, MemorySink, open_pty_pair,
)
from simulators.routes import DailyRoute, distance_m, make_route

T0 = 1_780_000_000.0          # 2026-05-28 20:26:40 UTC
CAPTURES = Path("/work/shared/data/nmea")
SENTENCE = re.compile(rb"\$([^$*\r\n]*)\*([0-9A-F]{2})\r\n")


def _cs_ok(body: bytes, cs: bytes) -> bool:
    return reduce(lambda a, b: a ^ b, body, 0) == int(cs, 16)


def parse(stream: bytes) -> list[list[str]]:
    """Fields of every sentence with a valid checksum, in order."""
    return [m.group(1).decode().split(",") for m in SENTENCE.finditer(stream)
            if _cs_ok(m.group(1), m.group(2))]


def ddmm(v: str, hemi: str) -> float:
    dot = v.index(".")
    deg = float(v[:dot - 2]) + float(v[dot - 2:]) / 60.0
    return -deg if hemi in "SW" else deg


def run(route_kind: str = "foot", seed: int = 1, n: int = 120, tod: float = 0.0,
        **cfg: object) -> tuple[GnssReceiver, list[bytes]]:
    rx = GnssReceiver(make_route(route_kind, seed, tod), seed, GnssConfig(**cfg),  # type: ignore[arg-type]
                      route_start=T0)
    return rx, [rx.read(T0 + i) for i in range(n)]


def first_fix_index(epochs: list[bytes]) -> int:
    for i, e in enumerate(epochs):
        if any(f[0].endswith("RMC") and f[2] == "A" for f in parse(e)):
            return i
    return -1


def test_independent_reader_accepts_the_real_captures() -> None:
    data = (CAPTURES / "beidou-bd.log").read_bytes()
    assert len(parse(data)) > 50


def test_every_sentence_has_a_valid_checksum() -> None:
    _, epochs = run(n=90)
    for e in epochs[1:]:
        lines = e.split(b"\r\n")[:-1]
        assert lines and len(parse(e)) == len(lines)


def test_first_output_starts_with_power_on_garbage() -> None:
    _, epochs = run(n=2)
    assert not epochs[0].startswith(b"$")
    assert epochs[0].index(b"$") > 0 and parse(epochs[0])


def test_no_garbage_when_disabled() -> None:
    _, epochs = run(n=1, power_on_garbage=False, garbage_rate=0.0)
    assert epochs[0].startswith(b"$")


def test_cold_start_has_no_fix_for_20_to_40_seconds() -> None:
    _, epochs = run(n=60)
    assert 20 <= first_fix_index(epochs) <= 41


def test_time_fields_are_empty_for_the_first_seconds_of_a_cold_start() -> None:
    _, epochs = run(n=10)
    rmc0 = next(f for f in parse(epochs[0]) if f[0] == "GNRMC")
    rmc9 = next(f for f in parse(epochs[9]) if f[0] == "GNRMC")
    assert rmc0[1] == "" and rmc0[9] == ""
    assert rmc9[1] == "202649.00" and rmc9[9] == "280526"


def test_no_fix_sentences_have_empty_fields_never_zero() -> None:
    _, epochs = run(n=15)
    for e in epochs:
        for f in parse(e):
            if f[0] == "GNRMC":
                assert f[2] == "V" and f[3:7] == ["", "", "", ""]
            if f[0] == "GNGGA":
                assert f[6] == "0" and f[2:6] == ["", "", "", ""]
        assert b",0.0000" not in e and b",00000.0" not in e


def test_fixes_follow_the_route_within_a_few_metres() -> None:
    rx, epochs = run("vehicle", 2, n=300)
    errors = []
    for i, e in enumerate(epochs):
        for f in parse(e):
            if f[0] == "GNGGA" and f[6] == "1":
                truth = rx.route.at(float(i))
                errors.append(distance_m(ddmm(f[2], f[3]), ddmm(f[4], f[5]),
                                         truth.lat, truth.lon))
    assert len(errors) > 200
    errors.sort()
    assert errors[len(errors) // 2] < 8.0
    assert errors[-1] < 40.0
    assert errors[-1] > 0.1          # noisy, not the truth copied


def test_rmc_speed_and_course_follow_the_route() -> None:
    rx, epochs = run("vehicle", 2, n=200)
    for i, e in enumerate(epochs):
        for f in parse(e):
            if f[0] == "GNRMC" and f[2] == "A":
                truth = rx.route.at(float(i))
                assert abs(float(f[7]) * 0.514444 - truth.speed_ms) < 0.5
                if truth.speed_ms > 3 and f[8]:
                    d = abs(float(f[8]) - truth.course_deg) % 360
                    assert min(d, 360 - d) < 12


def test_course_is_empty_when_standing_still() -> None:
    _, epochs = run("vehicle", 2, n=400)
    rmcs = [f for e in epochs for f in parse(e) if f[0] == "GNRMC" and f[2] == "A"]
    assert any(f[8] == "" and float(f[7]) < 0.6 for f in rmcs)


def test_indoors_means_no_fix() -> None:
    # 03:00 local: the wristband wearer is at home, indoors, all the time
    _, epochs = run("wristband", 4, n=90, tod=3 * 3600.0)
    assert first_fix_index(epochs) == -1
    ggas = [f for e in epochs for f in parse(e) if f[0] == "GNGGA"]
    assert all(f[6] == "0" and f[2] == "" for f in ggas)


def test_fix_returns_a_few_seconds_after_going_outdoors() -> None:
    route = make_route("wristband", 4, 0.0)
    assert isinstance(route, DailyRoute)
    leave = route.places.schedule.leave_home_s
    rx = GnssReceiver(route, 4, GnssConfig(), route_start=T0)
    epochs = [rx.read(T0 + leave - 60 + i) for i in range(120)]
    i = first_fix_index(epochs)
    assert 60 + 2 <= i <= 60 + 9


def test_hdop_and_satellites_vary() -> None:
    _, epochs = run("vehicle", 6, n=600)
    ggas = [f for e in epochs for f in parse(e) if f[0] == "GNGGA" and f[6] == "1"]
    assert len({f[8] for f in ggas}) >= 3
    assert len({f[7] for f in ggas}) >= 3
    assert all(4 <= int(f[7]) <= 24 and 0.5 <= float(f[8]) < 5 for f in ggas)


def test_combined_mode_sends_gn_fix_and_per_constellation_gsa_gsv() -> None:
    _, epochs = run(n=60, gsv_period_s=1)
    names = {f[0] for e in epochs for f in parse(e)}
    assert {"GNRMC", "GNGGA", "GPGSA", "BDGSA", "GPGSV", "BDGSV"} <= names


def test_gps_only_mode_uses_the_gp_talker() -> None:
    _, epochs = run(n=60, talker="GP")
    names = {f[0] for e in epochs for f in parse(e) if not f[0].startswith("P")}
    assert names == {"GPRMC", "GPGGA", "GPGSA", "GPGSV"}


def test_beidou_only_mode_uses_the_bd_talker() -> None:
    _, epochs = run(n=60, talker="BD")
    names = {f[0] for e in epochs for f in parse(e) if not f[0].startswith("P")}
    assert names == {"BDRMC", "BDGGA", "BDGSA", "BDGSV"}
    assert first_fix_index(epochs) > 0


def test_gb_talker_numbers_beidou_prns_from_201() -> None:
    _, epochs = run(n=10, beidou_talker="GB", gsv_period_s=1)
    gsv = [f for e in epochs for f in parse(e) if f[0] == "GBGSV"]
    prns = [int(x) for f in gsv for x in f[4::4] if x]
    assert prns and all(201 <= p <= 237 for p in prns)


def test_gsv_pages_are_consistent() -> None:
    _, epochs = run(n=5, gsv_period_s=1)
    gsv = [f for f in parse(epochs[2]) if f[0] == "GPGSV"]
    total, count = int(gsv[0][1]), int(gsv[0][3])
    assert len(gsv) == total == (count + 3) // 4
    assert sum(len(f[4:]) // 4 for f in gsv) == count


def test_proprietary_sentences_appear() -> None:
    _, epochs = run(n=30)
    assert any(f[0] == "PSRFEPE" for e in epochs for f in parse(e))


def test_same_seed_gives_the_same_bytes() -> None:
    assert run(n=60)[1] == run(n=60)[1]


def test_different_seeds_give_different_bytes() -> None:
    assert run(seed=1, n=60)[1] != run(seed=2, n=60)[1]


def test_corrupt_rate_produces_bad_checksums() -> None:
    rx, epochs = run(n=60, corrupt_rate=0.2)
    lines = sum(e.count(b"\r\n") for e in epochs)
    assert rx.corrupted > 0
    assert len([f for e in epochs for f in parse(e)]) == lines - rx.corrupted


def test_time_going_backwards_is_refused() -> None:
    rx, _ = run(n=3)
    with pytest.raises(ValueError, match="backwards"):
        rx.read(T0)


def test_bad_config_is_refused_with_the_field_name() -> None:
    with pytest.raises(ValueError, match="talker"):
        GnssConfig(talker="GL")
    with pytest.raises(ValueError, match="cold_start_s"):
        GnssConfig(cold_start_s=(40.0, 20.0))


def test_feeder_writes_epochs_to_a_sink_without_pacing() -> None:
    rx = GnssReceiver(make_route("foot", 1), 1, route_start=T0)
    sink = MemorySink()
    stats = GnssFeeder(None, rx, sink=sink).run(5, realtime=False, start_unix=T0)
    assert stats.epochs == 5 and stats.bytes_dropped == 0
    assert stats.bytes_written == len(sink.buf) > 0


def test_feeder_stops_when_told() -> None:
    rx = GnssReceiver(make_route("foot", 1), 1)
    stop = threading.Event()
    stop.set()
    stats = GnssFeeder(None, rx, sink=MemorySink()).run(3600, stop=stop)
    assert stats.epochs == 0


def test_pty_round_trip_with_pyserial() -> None:
    master, slave_path, slave = open_pty_pair()
    sink = FdSink(master, close_fds=(slave,))
    rx = GnssReceiver(make_route("foot", 1), 1, route_start=T0)
    port = serial.Serial(slave_path, 9600, timeout=2)
    try:
        feeder = GnssFeeder(None, rx, sink=sink)
        t = threading.Thread(target=feeder.run, args=(3,),
                             kwargs={"realtime": False, "start_unix": T0})
        t.start()
        got = bytearray()
        while got.count(b"\r\n") < 8:
            chunk = port.read(256)
            assert chunk, "nothing arrived through the pty"
            got += chunk
        t.join(5)
    finally:
        port.close()
        sink.close(drain_s=0)
    names = [f[0] for f in parse(bytes(got))]
    assert names[:2] == ["GNRMC", "GNGGA"]


def test_pty_write_without_reader_drops_instead_of_blocking() -> None:
    master, _, slave = open_pty_pair()
    sink = FdSink(master, write_timeout_s=0.2, close_fds=(slave,))
    try:
        written = sink.write(b"x" * 1_000_000)
    finally:
        sink.close(drain_s=0)
    assert 0 < written < 1_000_000
    with pytest.raises(OSError):
        os.fstat(master)


def test_warm_restart_fixes_sooner_than_a_cold_start() -> None:
    rx, epochs = run("vehicle", 2, n=60)
    assert first_fix_index(epochs) >= 20
    rx.power_on(T0 + 60, "warm")
    again = [rx.read(T0 + 60 + i) for i in range(30)]
    assert 5 <= first_fix_index(again) <= 16


def test_uart_delivers_each_second_once_in_lines() -> None:
    rx = GnssReceiver(make_route("foot", 1), 1, GnssConfig(power_on_garbage=False),
                      route_start=T0)
    uart = GnssUart(rx)
    uart.advance(T0 + 0.2)
    uart.advance(T0 + 0.9)               # same second: nothing new
    first = uart.read()
    assert first is not None and first.count(b"$GNRMC") == 1
    uart.advance(T0 + 2.5)
    lines = []
    while (line := uart.readline()) is not None:
        lines.append(line)
    assert sum(line.startswith(b"$GNRMC") for line in lines) == 2
    assert all(line.endswith(b"\r\n") for line in lines)


def test_uart_overflow_drops_and_counts_like_a_real_rx_buffer() -> None:
    rx = GnssReceiver(make_route("foot", 1), 1, route_start=T0)
    uart = GnssUart(rx, rxbuf=256)
    uart.advance(T0)
    uart.advance(T0 + 3)
    assert uart.any() == 256 and uart.overflow_bytes > 0


def test_uart_delivers_nothing_while_powered_off() -> None:
    rx = GnssReceiver(make_route("foot", 1), 1, route_start=T0)
    uart = GnssUart(rx)
    uart.powered = False
    uart.advance(T0 + 3)
    assert uart.any() == 0 and uart.read() is None


def test_stray_bytes_between_sentences_leave_every_sentence_readable() -> None:
    rx, epochs = run(n=60, garbage_rate=0.5)
    assert rx.garbage_bursts > 10
    for e in epochs:
        assert len(parse(e)) == e.count(b"\r\n")
    assert sum(len(e) for e in epochs) > sum(len(m.group(0)) for e in epochs
                                             for m in SENTENCE.finditer(e))
