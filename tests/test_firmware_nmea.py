"""NMEA parser against real receiver captures (/work/shared/data/nmea)."""

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.app.nmea import MAX_LINE, NmeaParser
from firmware.devtools import ROOT, fix_sentences, no_fix_sentences, sentence
from protocol.codec import FIX_3D, GNSS_BEIDOU, GNSS_GLONASS, GNSS_GPS

# GPSD's regression captures, kept in the repository (BSD terms: COPYING.gpsd)
DATA = Path(os.environ.get("FT_NMEA_DIR", str(ROOT / "firmware" / "testdata" / "nmea")))
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="NMEA captures not available")


def replay(name, chunk=37):
    """Feed a capture in odd-sized chunks; returns (parser, fixes seen)."""
    p = NmeaParser()
    data = (DATA / name).read_bytes()
    fixes = []
    last = 0
    for i in range(0, len(data), chunk):
        p.feed(data[i:i + chunk])
        if p.has_fix and p.fix_updates != last:
            last = p.fix_updates
            fixes.append((p.lat_e7, p.lon_e7, p.gnss_mask()))
    return p, fixes


@needs_data
def test_beidou_bd_talker_capture_produces_beidou_fixes():
    p, fixes = replay("beidou-bd.log")
    assert fixes
    lat, lon, gnss = fixes[-1]
    assert abs(lat - 312482383) < 100 and abs(lon - 1215874067) < 100   # Shanghai
    assert gnss & GNSS_BEIDOU and gnss & GNSS_GPS


@needs_data
def test_beidou_gb_talker_capture_produces_beidou_fixes():
    p, fixes = replay("beidou-gb.log")
    assert fixes
    assert fixes[-1][2] & GNSS_BEIDOU


@pytest.mark.parametrize("talker", ["BD", "GB"])
def test_beidou_only_position_sentences_produce_a_fix(talker):
    p = NmeaParser()
    p.feed(fix_sentences(31.2479, 121.5874, 1767225600, talker=talker))
    assert p.has_fix
    assert abs(p.lat_e7 - 312479000) < 20 and abs(p.lon_e7 - 1215874000) < 20
    assert p.gnss_mask() == GNSS_BEIDOU


@pytest.mark.parametrize("talker,bit", [("GP", GNSS_GPS), ("GL", GNSS_GLONASS)])
def test_other_talkers_produce_a_fix(talker, bit):
    p = NmeaParser()
    p.feed(fix_sentences(-27.21, 153.05, 1767225600, talker=talker))
    assert p.has_fix and p.gnss_mask() == bit and p.lat_e7 < 0


@needs_data
def test_ublox_capture_gives_the_documented_position():
    p, fixes = replay("ublox-8.log")
    assert len(fixes) > 100
    assert abs(p.lat_e7 - 440690000) < 2000 and abs(p.lon_e7 + 1213143000) < 2000
    assert p.fix_type() == FIX_3D and p.sats == 12
    assert p.gnss_mask() == GNSS_GPS | GNSS_GLONASS


@needs_data
def test_telit_capture_position_matches_its_notes():
    p, _ = replay("telit-he910.log")
    # "50 50.4126,N  004 20.8228,E"
    assert abs(p.lat_e7 - 508402100) < 1000 and abs(p.lon_e7 - 43470467) < 1000


@needs_data
def test_southern_hemisphere_capture_has_negative_latitude():
    p, fixes = replay("haicom-305N.log")
    assert fixes and all(lat < 0 and lon > 0 for lat, lon, _ in fixes)


@needs_data
def test_proprietary_sentences_are_skipped():
    p, _ = replay("beidou-bd.log")         # $PSRFEPE, $PSRF...
    assert p.skipped >= 10 and p.bad_checksum == 0


@needs_data
def test_capture_before_first_fix_gives_no_position():
    data = (DATA / "telit-he910.log").read_bytes()
    p = NmeaParser()
    p.feed(data[:data.index(b"$GPRMC,,V") + 300])
    assert not p.has_fix and p.fix_updates == 0


def test_no_fix_is_never_reported_as_zero_zero():
    p = NmeaParser()
    p.feed(no_fix_sentences(1767225600))
    assert not p.has_fix and p.fix_updates == 0
    p.feed(fix_sentences(31.0, 121.0, 1767225601))
    assert p.has_fix
    p.feed(no_fix_sentences(1767225602))
    assert not p.has_fix


def test_bad_checksum_is_dropped_and_counted():
    p = NmeaParser()
    good = fix_sentences(31.0, 121.0, 1767225600)
    bad = good.replace(b"A,31", b"A,32", 1)
    p.feed(bad.split(b"\r\n")[0] + b"\r\n")
    assert p.bad_checksum == 1 and not p.has_fix


def test_missing_checksum_is_dropped():
    p = NmeaParser()
    p.feed(b"$GPRMC,120000.00,A,3100.000,N,12100.000,E,0.0,0.0,010126,,,A\r\n")
    assert p.bad_checksum == 1 and not p.has_fix


def test_garbage_bytes_between_sentences_are_ignored():
    p = NmeaParser()
    p.feed(os.urandom(500).replace(b"$", b"x") + b"\r\n")
    p.feed(b"\x00\xff\xfe" + fix_sentences(31.0, 121.0, 1767225600) + b"\x81\x82")
    assert p.has_fix


def test_binary_noise_inside_a_sentence_drops_only_that_sentence():
    p = NmeaParser()
    s = fix_sentences(31.0, 121.0, 1767225600)
    p.feed(s[:20] + b"\x00\x9f" + s[20:])
    assert p.garbage >= 1
    assert p.has_fix                      # GGA after the damaged RMC still counts


def test_overlong_line_is_dropped_and_the_next_sentence_parses():
    p = NmeaParser()
    p.feed(b"$GPGGA," + b"1" * (MAX_LINE + 50) + b"\r\n")
    assert p.overlong == 1
    p.feed(fix_sentences(31.0, 121.0, 1767225600))
    assert p.has_fix


def test_partial_line_cut_by_a_new_sentence_is_dropped():
    p = NmeaParser()
    s = fix_sentences(31.0, 121.0, 1767225600)
    p.feed(s[:30] + s)
    assert p.garbage == 1 and p.has_fix


def test_sentence_split_across_feeds_parses():
    p = NmeaParser()
    s = fix_sentences(31.0, 121.0, 1767225600)
    for i in range(len(s)):
        p.feed(s[i:i + 1])
    assert p.has_fix


def test_rmc_gives_utc_time_for_the_clock():
    p = NmeaParser()
    p.feed(fix_sentences(31.0, 121.0, 1767225600))
    assert p.utc_s == 1767225600


def test_unknown_talker_is_skipped():
    p = NmeaParser()
    p.feed(sentence("XXRMC,120000.00,A,3100.000,N,12100.000,E,0.0,0.0,010126,,,A"))
    assert p.skipped == 1 and not p.has_fix


def test_coordinates_out_of_range_are_refused():
    p = NmeaParser()
    p.feed(sentence("GPRMC,120000.00,A,9500.000,N,12100.000,E,0.0,0.0,010126,,,A"))
    assert not p.has_fix


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_arbitrary_bytes_never_raise(data, chunk):
    p = NmeaParser()
    for i in range(0, len(data), chunk):
        p.feed(data[i:i + chunk])
    if p.has_fix:
        assert -900000000 <= p.lat_e7 <= 900000000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"$", b",", b"*", b"\r\n", b"GPGGA", b"GNRMC", b"BDGSA",
                                 b"A", b"V", b"1", b"3100.5", b"N", b"E", b".", b"-",
                                 b"7F", b"\x00"]), max_size=80))
def test_nmea_shaped_noise_never_raises(parts):
    p = NmeaParser()
    p.feed(b"".join(parts))
