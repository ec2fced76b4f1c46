"""``python -m simulators {gnss,check,rogue,fleet,demo} ...``

    gnss   a virtual GNSS receiver on a serial port, a new pty, or stdout
    check  the end-to-end checker on the upstream broker (or an offline capture)
    rogue  the rogue client against a loopback broker
    fleet  a simulated fleet against a real site (brokers, gateway) with faults, checked
    demo   the main job on embedded defaults (make demo)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from protocol.topics import is_valid_device_id
from simulators.rogue import Captured
from simulators.runner_cli import add_demo, add_fleet
from simulators.routes import DAY_S, LOCAL_UTC_OFFSET_S, ROUTE_KINDS, make_route

EXIT_USAGE = 2


# ---- argument types with specific messages ----------------------------------

def _port(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError("port must be an integer, got %r" % s) from None
    if not 0 < n < 65536:
        raise argparse.ArgumentTypeError("port must be 1..65535, got %d" % n)
    return n


def _bounded_float(lo: float, hi: float, what: str,
                   lo_open: bool = False) -> Callable[[str], float]:
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError("%s must be a number, got %r" % (what, s)) from None
        if not (lo < v if lo_open else lo <= v) or not v <= hi:
            raise argparse.ArgumentTypeError("%s must be %s%g..%g, got %g"
                                             % (what, ">" if lo_open else "", lo, hi, v))
        return v
    return parse


def _bounded_int(lo: int, hi: int, what: str) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError("%s must be an integer, got %r" % (what, s)) from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError("%s must be %d..%d, got %d" % (what, lo, hi, v))
        return v
    return parse


def _range(s: str) -> tuple[float, float]:
    """'30' or '20-40' seconds."""
    try:
        if "-" in s:
            a, b = s.split("-", 1)
            lo, hi = float(a), float(b)
        else:
            lo = hi = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds like 30 or 20-40, got %r" % s) from None
    if not 0 <= lo <= hi <= 3600:
        raise argparse.ArgumentTypeError("need 0 <= low <= high <= 3600, got %r" % s)
    return lo, hi


def _time_of_day(s: str) -> float:
    try:
        hh, mm = s.split(":")
        h, m = int(hh), int(mm)
    except ValueError:
        raise argparse.ArgumentTypeError("time of day must be HH:MM, got %r" % s) from None
    if not (0 <= h < 24 and 0 <= m < 60):
        raise argparse.ArgumentTypeError("time of day out of range: %r" % s)
    return float(h * 3600 + m * 60)


def _device_ids(s: str) -> list[str]:
    ids = [x for x in s.split(",") if x]
    bad = [x for x in ids if not is_valid_device_id(x)]
    if bad or not ids:
        raise argparse.ArgumentTypeError(
            "device ids are 3-32 of A-Z a-z 0-9 _ - (starting alphanumeric), "
            "comma-separated; bad: %s" % (", ".join(repr(b) for b in bad) or "none given"))
    return ids


def _device_id(s: str) -> str:
    return _device_ids(s)[0] if "," not in s else _fail("one device id, not a list")


def _fail(msg: str) -> str:
    raise argparse.ArgumentTypeError(msg)


def _hex_key(s: str) -> bytes:
    try:
        k = binascii.unhexlify(s)
    except (binascii.Error, ValueError):
        raise argparse.ArgumentTypeError("key must be hex, got %r" % s[:16]) from None
    if len(k) != 32:
        raise argparse.ArgumentTypeError("key must be 32 bytes (64 hex digits), got %d bytes"
                                         % len(k))
    return k


def _existing_file(s: str) -> Path:
    p = Path(s)
    if not p.is_file():
        raise argparse.ArgumentTypeError("no such file: %s" % s)
    return p


# ---- gnss ----------------------------------------------------------------

def _add_gnss(sub: argparse._SubParsersAction) -> None:
    from simulators.gnss import BEIDOU_TALKERS, TALKERS

    p = sub.add_parser("gnss", help="virtual GNSS receiver (NMEA at 1 Hz)",
                       description="Feed NMEA from a seeded route into a serial port "
                                   "(a device's GNSS UART through a USB-serial adapter), "
                                   "a new pseudo-terminal, or stdout.")
    p.add_argument("--route", choices=ROUTE_KINDS, default="foot")
    p.add_argument("--seed", type=_bounded_int(0, 2**31 - 1, "seed"), default=1)
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--serial", metavar="PATH", help="serial port, e.g. /dev/ttyUSB0")
    out.add_argument("--pty", action="store_true",
                     help="create a pty pair and print the slave path (first line of stdout)")
    out.add_argument("--stdout", action="store_true", help="write NMEA to stdout")
    p.add_argument("--baud", type=_bounded_int(300, 921600, "baud rate"), default=9600)
    p.add_argument("--duration", type=_bounded_float(0, 30 * DAY_S, "duration", lo_open=True),
                   default=3600.0, help="seconds (default 3600)")
    p.add_argument("--fast", action="store_true",
                   help="no real-time pacing: epochs back to back (files, tests)")
    p.add_argument("--start-unix", type=_bounded_float(0, 2**32 - 1, "start time"),
                   help="simulated UTC at start (default: now)")
    p.add_argument("--time-of-day", type=_time_of_day,
                   help="wristband route: local (UTC+8) time of day at start, HH:MM "
                        "(default: from the start time)")
    p.add_argument("--talker", choices=TALKERS, default="GN")
    p.add_argument("--beidou-talker", choices=BEIDOU_TALKERS, default="BD")
    p.add_argument("--cold-start", type=_range, default=(20.0, 40.0), metavar="S[-S]",
                   help="time to first fix, seconds (default 20-40)")
    p.add_argument("--corrupt-rate", type=_bounded_float(0, 1, "corrupt rate"), default=0.0,
                   help="probability of a bit error per sentence")
    p.add_argument("--garbage-rate", type=_bounded_float(0, 1, "garbage rate"), default=0.005,
                   help="probability per second of stray bytes between sentences")
    p.add_argument("--no-garbage", action="store_true",
                   help="no garbage bytes at all (power-on or between sentences)")
    p.set_defaults(func=cmd_gnss)


def cmd_gnss(a: argparse.Namespace) -> int:
    from simulators.gnss import FdSink, GnssConfig, GnssFeeder, GnssReceiver, open_pty_pair

    start = a.start_unix if a.start_unix is not None else float(int(time.time()))
    tod = a.time_of_day if a.time_of_day is not None else (start + LOCAL_UTC_OFFSET_S) % DAY_S
    route = make_route(a.route, a.seed, tod)
    cfg = GnssConfig(talker=a.talker, beidou_talker=a.beidou_talker, cold_start_s=a.cold_start,
                     corrupt_rate=a.corrupt_rate, power_on_garbage=not a.no_garbage,
                     garbage_rate=0.0 if a.no_garbage else a.garbage_rate)
    rx = GnssReceiver(route, a.seed, cfg, route_start=start)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if a.pty:
        master, slave_path, slave = open_pty_pair()
        print(slave_path, flush=True)
        feeder = GnssFeeder(None, rx, sink=FdSink(master, close_fds=(slave,)))
    elif a.stdout:
        feeder = GnssFeeder(None, rx, sink=_StdoutSink())
    else:
        try:
            feeder = GnssFeeder(a.serial, rx, baudrate=a.baud)
        except Exception as e:   # pyserial raises SerialException (an OSError) or ValueError
            print("gnss: cannot open %s: %s" % (a.serial, e), file=sys.stderr)
            return 1
    try:
        stats = feeder.run(a.duration, stop=stop, realtime=not a.fast, start_unix=start)
    except KeyboardInterrupt:
        stats = feeder.stats
    finally:
        feeder.close()
    print("gnss: %d epochs, %d bytes written, %d dropped"
          % (stats.epochs, stats.bytes_written, stats.bytes_dropped), file=sys.stderr)
    return 0


class _StdoutSink:
    def write(self, data: bytes) -> int:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            return 0
        return len(data)

    def close(self) -> None:
        pass


# ---- check -------------------------------------------------------------------

def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="end-to-end checker on the upstream broker",
                       description="Subscribe to ft/up/v1/# (QoS 1, persistent session), then "
                                   "compare with the produced and attack logs. Exit status 1 "
                                   "when anything was lost or any attack got through.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", "--broker-port", dest="port", type=_port,
                   help="upstream broker port (required unless --from-capture)")
    p.add_argument("--produced", type=_existing_file, action="append", required=True,
                   metavar="FILE", help="produced log (JSON lines); repeatable")
    p.add_argument("--attacks", type=_existing_file, action="append", default=[],
                   metavar="FILE", help="attack log (JSON lines); repeatable")
    p.add_argument("--keys", type=_existing_file, metavar="FILE",
                   help="device keys to re-verify every envelope "
                        '({"devices": {id: {"keys": {kid: hex}, "revoked": false}}})')
    p.add_argument("--client-id", default="ft-checker")
    p.add_argument("--clean", action="store_true",
                   help="clean session (default: persistent, so a restarted checker "
                        "receives what was queued for it)")
    p.add_argument("--duration", type=_bounded_float(0, 7 * DAY_S, "duration", lo_open=True),
                   default=60.0, help="longest wait for upstream messages, s (default 60)")
    p.add_argument("--idle", type=_bounded_float(0, 3600, "idle", lo_open=True), default=5.0,
                   help="stop after this long without messages, s (default 5)")
    p.add_argument("--min-messages", type=_bounded_int(0, 10**9, "min messages"), default=1,
                   help="do not stop for idleness before this many messages (default 1)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    p.add_argument("--capture", type=Path, metavar="FILE",
                   help="also write every upstream message received (JSON lines)")
    p.add_argument("--from-capture", type=_existing_file, metavar="FILE",
                   help="check a capture offline instead of subscribing")
    p.set_defaults(func=cmd_check)


def cmd_check(a: argparse.Namespace) -> int:
    from simulators.checker import (
        Checker, CheckerConfig, CheckerError, load_keys, replay_capture,
    )

    if a.from_capture is None and a.port is None:
        print("check: --port is required (or --from-capture FILE)", file=sys.stderr)
        return EXIT_USAGE
    try:
        keys = load_keys(a.keys) if a.keys else None
        cfg = CheckerConfig(host=a.host, port=a.port or 1883, client_id=a.client_id,
                            clean_session=a.clean)
        checker = Checker(cfg, produced=a.produced, attacks=a.attacks, keys=keys,
                          capture=a.capture)
        if a.from_capture is not None:
            replay_capture(checker, a.from_capture)
        else:
            checker.start()
            try:
                if not checker.wait_idle(a.idle, a.duration, a.min_messages):
                    print("check: still receiving, or fewer than %d messages, after %g s; "
                          "reporting what arrived" % (a.min_messages, a.duration),
                          file=sys.stderr)
            except KeyboardInterrupt:
                pass
            finally:
                checker.stop()
        report = checker.report()
    except (CheckerError, ValueError) as e:
        print("check: %s" % e, file=sys.stderr)
        return 1
    report.render()
    if a.json:
        a.json.write_text(report.to_json())
    return report.exit_code


# ---- rogue ---------------------------------------------------------------------

def _add_rogue(sub: argparse._SubParsersAction) -> None:
    from simulators.checker import ATTACK_KINDS

    p = sub.add_parser("rogue", help="rogue client against a loopback broker",
                       description="Publish forged, replayed, re-topiced, tampered, malformed, "
                                   "flooding and impersonating messages; log every payload.")
    p.add_argument("--host", default="127.0.0.1", help="broker host (loopback only)")
    p.add_argument("--port", "--broker-port", dest="port", type=_port, required=True)
    p.add_argument("--attacks-log", type=Path, required=True, metavar="FILE",
                   help="append every attack payload here (JSON lines)")
    p.add_argument("--seed", type=_bounded_int(0, 2**31 - 1, "seed"), default=0)
    p.add_argument("--client-id", default="rogue")
    p.add_argument("--targets", type=_device_ids, default=[],
                   help="device ids to aim at, comma-separated")
    p.add_argument("--sniff", type=_bounded_float(0, 600, "sniff seconds", lo_open=True),
                   help="first capture legitimate messages for this many seconds")
    p.add_argument("--legit-file", type=_existing_file, metavar="FILE",
                   help='legitimate messages, JSON lines {"topic": ..., "payload_b64": ...}')
    p.add_argument("--own-device", type=_device_id, help="the rogue's own enrolled device id")
    p.add_argument("--own-key", type=_hex_key, help="its key, 64 hex digits")
    p.add_argument("--own-key-id", type=_bounded_int(0, 15, "key id"), default=0)
    p.add_argument("--per-kind", type=_bounded_int(0, 1000, "per-kind count"), default=4)
    p.add_argument("--flood", type=_bounded_int(0, 100_000, "flood count"), default=200)
    p.add_argument("--flood-rate", type=_bounded_float(0, 5000, "flood rate", lo_open=True),
                   default=500.0, help="messages per second (default 500)")
    p.add_argument("--big-payload", type=_bounded_int(0, 16 * 1024 * 1024, "big payload"),
                   default=1024 * 1024, help="size of the oversize payload, bytes (0: none)")
    p.add_argument("--only", type=lambda s: _kinds(s, ATTACK_KINDS), metavar="KIND,...",
                   help="only these attacks: " + ",".join(ATTACK_KINDS))
    p.add_argument("--cafile")
    p.add_argument("--certfile")
    p.add_argument("--keyfile")
    p.set_defaults(func=cmd_rogue)


def _kinds(s: str, allowed: Sequence[str]) -> list[str]:
    ks = [k for k in s.split(",") if k]
    bad = [k for k in ks if k not in allowed]
    if bad or not ks:
        raise argparse.ArgumentTypeError("unknown attack kind(s) %s; choose from %s"
                                         % (", ".join(bad) or "none", ", ".join(allowed)))
    return ks


def _load_legit(path: Path) -> list[Captured]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append(Captured(str(obj["topic"]), base64.b64decode(obj["payload_b64"])))
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            raise ValueError("%s line %d: %s" % (path, n, e)) from None
    return out


def cmd_rogue(a: argparse.Namespace) -> int:
    from simulators.checker import AttackLog
    from simulators.rogue import AttackFactory, OwnDevice, RogueClient, RogueConfig, RogueError

    if (a.own_device is None) != (a.own_key is None):
        print("rogue: --own-device and --own-key go together", file=sys.stderr)
        return EXIT_USAGE
    tls = {k: v for k, v in (("cafile", a.cafile), ("certfile", a.certfile),
                             ("keyfile", a.keyfile)) if v}
    try:
        cfg = RogueConfig(host=a.host, port=a.port, client_id=a.client_id, seed=a.seed,
                          per_kind=a.per_kind, flood_count=a.flood, flood_rate=a.flood_rate,
                          big_payload=a.big_payload, tls=tls or None)
        own = OwnDevice(a.own_device, a.own_key, a.own_key_id) if a.own_device else None
        legit = _load_legit(a.legit_file) if a.legit_file else []
    except ValueError as e:
        print("rogue: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    log = AttackLog(a.attacks_log)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with RogueClient(cfg, log) as rogue:
            if a.sniff:
                legit += rogue.sniff(a.sniff)
            factory = AttackFactory(a.seed, legit, a.targets, own, cfg.big_payload)
            res = rogue.run(factory, a.only, stop)
    except RogueError as e:
        print("rogue: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        log.close()
    print("rogue: logged %s; published %d, failed %d; raw sent %d, refused %d"
          % (dict(res.logged), res.published, res.publish_failed, res.raw_sent,
             res.raw_refused))
    return 0 if res.publish_failed == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m simulators", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_gnss(sub)
    _add_check(sub)
    _add_rogue(sub)
    add_fleet(sub)
    add_demo(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args, unknown = ap.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any", False):
        ap.error("unrecognized arguments: %s" % " ".join(unknown))
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        os._exit(0)
