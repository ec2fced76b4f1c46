"""Read envelopes by hand.

    python -m protocol decode HEX|FILE [--topic ft/v1/ID/KIND] [--key HEX | --key-file F]
                                       [--now UNIX] [--json]

Prints the header and body fields and, when a topic and a key are given, the
verifier's verdict (without a replay window: freshness against history is the
gateway's business). FILE holds raw bytes or hex text. CPython only.
"""

from __future__ import annotations

import argparse
import binascii
import json
import sys
import time
from pathlib import Path

from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.topics import NAME_BY_KIND
from protocol.verify import DeviceKeys, verify


class UsageError(Exception):
    pass


def read_payload(arg: str) -> bytes:
    path = Path(arg)
    if path.is_file():
        data = path.read_bytes()
        text = data.strip()
        try:
            return binascii.unhexlify(text) if text else data
        except (binascii.Error, ValueError):
            return data
    try:
        return binascii.unhexlify(arg.strip().replace(" ", ""))
    except (binascii.Error, ValueError):
        raise UsageError("%r is neither a file nor hex" % arg[:40]) from None


def read_key(args: argparse.Namespace) -> bytes | None:
    if args.key and args.key_file:
        raise UsageError("give --key or --key-file, not both")
    if args.key_file:
        try:
            key = Path(args.key_file).read_bytes()
        except OSError as e:
            raise UsageError("cannot read key file: %s" % e) from None
        if len(key) == 64:
            key = binascii.unhexlify(key)
    elif args.key:
        try:
            key = binascii.unhexlify(args.key)
        except (binascii.Error, ValueError):
            raise UsageError("--key is not hex") from None
    else:
        return None
    if len(key) != 32:
        raise UsageError("the key must be 32 bytes, got %d" % len(key))
    return key


def cmd_decode(args: argparse.Namespace) -> int:
    payload = read_payload(args.payload)
    key = read_key(args)
    out: dict = {"bytes": len(payload)}
    try:
        env = decode(payload)
        out.update(env.fields())
        out["kind_name"] = NAME_BY_KIND[env.kind]
        out["tag"] = env.tag.hex()
    except ProtocolError as e:
        out["decode_error"] = e.reason
        out["detail"] = e.detail
    if args.topic and key is not None:
        kid = out.get("key_id", 0)
        verdict = verify(args.topic, payload, lambda _d: DeviceKeys({kid: key}),
                         lambda _d, _l: None, args.now if args.now is not None else time.time())
        out["verdict"] = "accepted" if verdict.ok else "rejected: %s" % verdict.reason
        if not verdict.ok and verdict.detail:
            out["verdict_detail"] = verdict.detail
    elif args.topic or key is not None:
        out["verdict"] = "not checked: give both --topic and a key"
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        for k in sorted(out):
            print("%-14s %s" % (k, out[k]))
    if "decode_error" in out or str(out.get("verdict", "")).startswith("rejected"):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m protocol", description=__doc__.split("\n")[1])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("decode", help="print an envelope's fields and verdict")
    d.add_argument("payload", help="hex string or a file (raw or hex)")
    d.add_argument("--topic", help="topic it arrived on, e.g. ft/v1/rec-0001/gps")
    d.add_argument("--key", help="the device key, 64 hex digits")
    d.add_argument("--key-file", help="file with the 32-byte key (raw or hex)")
    d.add_argument("--now", type=int, help="receiver clock, Unix seconds (default: now)")
    d.add_argument("--json", action="store_true", help="one JSON object")
    args = p.parse_args(argv)
    try:
        return cmd_decode(args)
    except UsageError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
