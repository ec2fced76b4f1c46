"""Runs protocol/vectors/*.json and prints one JSON verdict per line.

Runs unchanged on CPython and on MicroPython so that the tests can check
that both interpreters reach the same verdict, field for field:

    micropython tests/vector_runner.py protocol/vectors/valid.json
"""

import binascii
import json
import sys

from protocol.replay import ReplayWindow
from protocol.verify import DeviceKeys, Limits, verify


def run_file(path):
    with open(path) as f:
        doc = json.load(f)
    devices = {}
    for did, d in doc["devices"].items():
        keys = {}
        for kid, khex in d["keys"].items():
            keys[int(kid)] = binascii.unhexlify(khex)
        devices[did] = DeviceKeys(keys, d["revoked"])
    lim = doc["limits"]
    limits = Limits(lim["max_payload"], lim["max_future_s"], lim["max_past_s"])
    results = []
    for v in doc["vectors"]:
        windows = {}
        for k, state in v.get("windows", {}).items():
            windows[k] = ReplayWindow.from_bytes(binascii.unhexlify(state))

        def window_of(did, lane, windows=windows):
            return windows.get("%s/%d" % (did, lane))

        verdict = verify(v["topic"], binascii.unhexlify(v["payload"]), devices.get,
                         window_of, v["now"], limits)
        if verdict.ok:
            got = {"ok": True, "fields": verdict.envelope.fields()}
        else:
            got = {"ok": False, "reason": verdict.reason}
        results.append({"name": v["name"], "got": got})
    return results


def main(paths):
    for p in paths:
        for r in run_file(p):
            print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv[1:])
