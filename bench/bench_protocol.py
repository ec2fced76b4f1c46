"""Protocol benchmark (issue 2): wire size and per-record CPU cost.

    .venv/bin/python bench/bench_protocol.py

Bytes per signed GPS fix against the same fix as JSON with a hex HMAC, and
encode+sign / decode+verify time per record on CPython and on the real
MicroPython interpreter (unix port), each the median of 5 runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.protocol_loop import KEY, main as _unused  # noqa: E402,F401

RUNS = 5
N_CPY = 20000
N_MPY = 2000


def json_fix_bytes() -> int:
    """The same fix as a typical JSON tracker message with a hex HMAC-SHA256."""
    body = {"device": "rec-0001", "kind": "gps", "epoch": 7, "seq": 100, "ts": 1764806400,
            "lat": 35.9912345, "lon": 119.4012345, "alt": 38, "speed": 1.42,
            "course": 273.5, "hdop": 0.8, "fix": "3d", "sats": 14, "gnss": ["GPS", "BDS"],
            "age": 0, "key_id": 1, "backlog": False}
    text = json.dumps(body, separators=(",", ":"))
    body["mac"] = hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()
    return len(json.dumps(body, separators=(",", ":")).encode())


def micropython() -> str:
    cand = Path(sys.executable).parent / "micropython"
    return str(cand) if cand.exists() else "micropython"


def run_loop(cmd: list[str], n: int) -> dict:
    env = dict(os.environ, MICROPYPATH=str(ROOT), PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd + [str(ROOT / "bench" / "protocol_loop.py"), str(n)],
                         capture_output=True, text=True, env=env, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(cmd: list[str], n: int) -> tuple[float, float, int]:
    runs = [run_loop(cmd, n) for _ in range(RUNS)]
    return (statistics.median(r["encode_sign_us"] for r in runs),
            statistics.median(r["decode_verify_us"] for r in runs), runs[0]["fix_bytes"])


def main() -> None:
    cpy_enc, cpy_dec, fix_bytes = median_of([sys.executable], N_CPY)
    mpy_enc, mpy_dec, _ = median_of([micropython()], N_MPY)
    jb = json_fix_bytes()
    print("signed GPS fix, binary v1      %4d bytes" % fix_bytes)
    print("same fix, JSON + hex HMAC      %4d bytes  (%.1fx larger)" % (jb, jb / fix_bytes))
    print("%-30s %12s %12s" % ("per record (median of %d)" % RUNS, "CPython", "MicroPython"))
    print("%-30s %9.2f us %9.2f us" % ("encode + sign (device path)", cpy_enc, mpy_enc))
    print("%-30s %9.2f us %9.2f us" % ("decode + verify (receiver)", cpy_dec, mpy_dec))
    print("%-30s %9.0f /s %9.0f /s" % ("decode + verify rate", 1e6 / cpy_dec, 1e6 / mpy_dec))


if __name__ == "__main__":
    main()
