"""`python -m protocol decode` prints fields and the verdict for a key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from protocol import message
from protocol.auth import Signer
from protocol.topics import KIND_GPS

KEY = bytes(range(32))
FIX = {"lat_e7": 359912345, "lon_e7": 1194012345, "alt_m": 38, "speed_cms": 142,
       "course_cdeg": 27350, "hdop_x10": 8, "fix": 2, "sats": 14, "gnss": 9, "age_s": 0}
PAYLOAD = message.encode(Signer("rec-0001", KEY, 1), KIND_GPS, 7, 42, 1764806400, FIX)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "protocol", *args], capture_output=True,
                          text=True, timeout=60)


def test_decode_hex_prints_fields_and_accepts_with_the_right_key() -> None:
    p = run("decode", PAYLOAD.hex(), "--topic", "ft/v1/rec-0001/gps", "--key", KEY.hex(),
            "--now", "1764806400", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["verdict"] == "accepted"
    assert out["body"]["lat_e7"] == 359912345 and out["seq"] == 42 and out["bytes"] == 49


def test_decode_file_with_wrong_key_reports_bad_signature(tmp_path: Path) -> None:
    f = tmp_path / "msg.bin"
    f.write_bytes(PAYLOAD)
    p = run("decode", str(f), "--topic", "ft/v1/rec-0001/gps", "--key", "11" * 32,
            "--now", "1764806400")
    assert p.returncode == 1
    assert "rejected: bad_signature" in p.stdout


def test_decode_garbage_reports_the_reason() -> None:
    p = run("decode", "deadbeef", "--json")
    assert p.returncode == 1
    assert json.loads(p.stdout)["decode_error"] == "version_unsupported"


def test_bad_key_argument_is_a_clear_usage_error() -> None:
    p = run("decode", PAYLOAD.hex(), "--topic", "ft/v1/rec-0001/gps", "--key", "abcd")
    assert p.returncode == 2
    assert "32 bytes" in p.stderr


def test_payload_neither_file_nor_hex_is_a_usage_error() -> None:
    p = run("decode", "not-hex-nor-file")
    assert p.returncode == 2 and "neither a file nor hex" in p.stderr
