"""``python -m gateway`` / ``fieldtrace-gateway``: run, devices, command, status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.config import GatewayConfig, load_config
from gateway.security_cli import add_commands as add_security_commands
from gateway.errors import ConfigError, GatewayError
from gateway.metrics import figures
from gateway.registry import KINDS, Registry

EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_NO_ACK = 3


def _config(args: argparse.Namespace) -> GatewayConfig:
    return load_config(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.metrics import serve
    from gateway.service import Gateway

    cfg = _config(args)
    logs.setup(cfg.log_level)
    gw = Gateway(cfg)
    serve(gw)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: gw.stop())
    gw.run()
    return 0


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_devices(args: argparse.Namespace) -> int:
    cfg = _config(args)
    reg = Registry(cfg.registry_path)
    if args.action == "add":
        key = bytes.fromhex(args.key_hex) if args.key_hex else None
        _print(reg.add(args.device, args.kind, key, args.key_id).public())
    elif args.action == "list":
        for d in reg.all():
            print("%-32s %-9s key %-2d %s" % (d.device_id, d.kind, d.current_key_id,
                                             "REVOKED" if d.revoked else "active"))
    elif args.action == "show":
        _print(reg.get(args.device).public())
    elif args.action == "revoke":
        _print(reg.revoke(args.device).public())
    elif args.action == "rotate-key":
        _print(reg.rotate_key(args.device, args.grace_s).public())
    elif args.action == "provision":
        from gateway.pki import Pki
        from gateway.provision import write_files

        tls_files = None
        if args.pki:
            pki = Pki(args.pki)
            if not any(r.cn == args.device and r.revoked_at is None for r in pki.issued()):
                pki.issue(args.device)
            tls_files = pki.device_files(args.device)
        for p in write_files(reg.get(args.device), cfg.provision, Path(args.out), tls_files):
            print(p)
    return 0


def _params(pairs: list[str]) -> dict[str, int]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not v.isdigit():
            raise GatewayError("parameter %r is not name=integer" % p, "command")
        out[k] = int(v)
    return out


def cmd_command(args: argparse.Namespace) -> int:
    from gateway.commands import send_command

    cfg = _config(args)
    if args.action == "rotate_cert":
        from gateway.certrotate import rotate_certificate
        if not args.pki:
            raise GatewayError("rotate_cert needs --pki (the site CA issues the new pair)",
                               "usage")
        res = rotate_certificate(cfg, args.device, args.pki, args.broker_dir, args.timeout)
    else:
        res = send_command(cfg, args.device, args.action, _params(args.params), args.timeout,
                           args.grace_s)
    _print(res.as_dict())
    return 0 if res.result is not None else EXIT_NO_ACK


def status_figures(cfg: GatewayConfig, interval: float) -> dict[str, Any]:
    from gateway.store import Reader

    r = Reader(cfg.store_path)
    try:
        c0, t0 = r.counters(), time.monotonic()
        if interval > 0:
            time.sleep(interval)
        c1, t1 = r.counters(), time.monotonic()
        states: dict[str, int] = {"online": 0, "unknown": 0, "offline": 0}
        live = r.liveness()
        for s, _, _ in live.values():
            states[s] = states.get(s, 0) + 1
        f = figures(c1, r.lane_stats(), states, time.time())
        dt = max(t1 - t0, 1e-9)
        f["rates_per_s"] = {k: round((c1.get(k, 0) - c0.get(k, 0)) / dt, 1) if interval else None
                            for k in ("accepted", "forwarded")}
        f["device_states"] = {d: {"state": s, "since": since, "reason": why}
                              for d, (s, since, why) in live.items()}
        return f
    finally:
        r.close()


def cmd_status(args: argparse.Namespace) -> int:
    f = status_figures(_config(args), args.interval)
    if args.json:
        _print(f)
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title="queue by lane")
    for col in ("lane", "depth", "bytes", "oldest age s"):
        t.add_column(col)
    for lane, d in f["lanes"].items():
        t.add_row(lane, str(d["depth"]), str(d["bytes"]), str(d["oldest_age_s"]))
    con.print(t)
    con.print("in %s/s  out %s/s  accepted %d  forwarded %d  duplicates %d" % (
        f["rates_per_s"]["accepted"], f["rates_per_s"]["forwarded"], f["accepted"],
        f["forwarded"], f["duplicates"]))
    con.print("rejected: %s" % (f["rejected"] or "none"))
    con.print("dropped: %s" % (f["dropped"] or "none"))
    if f["alerts"]:
        con.print("[bold red]alerts: %s[/]" % f["alerts"])
    con.print("devices: %s" % f["devices"])
    for d, s in f["device_states"].items():
        con.print("  %-32s %-8s since %s (%s)" % (
            d, s["state"], time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s["since"])),
            s["reason"]))
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=os.environ.get("FIELDTRACE_GATEWAY_CONFIG",
                                                           "gateway.toml"),
                        help="gateway TOML config (default: gateway.toml)")
    p = argparse.ArgumentParser(prog="fieldtrace-gateway", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("run", parents=[common], help="run the gateway")
    s.set_defaults(func=cmd_run)

    d = sub.add_parser("devices", help="the device registry")
    dsub = d.add_subparsers(dest="action", required=True)
    a = dsub.add_parser("add", parents=[common])
    a.add_argument("device")
    a.add_argument("--kind", choices=KINDS, required=True)
    a.add_argument("--key-hex", help="32-byte key as hex (default: random)")
    a.add_argument("--key-id", type=int, default=0)
    dsub.add_parser("list", parents=[common])
    for name in ("show", "revoke"):
        dsub.add_parser(name, parents=[common]).add_argument("device")
    r = dsub.add_parser("rotate-key", parents=[common])
    r.add_argument("device")
    r.add_argument("--grace-s", type=float, default=7 * 86400,
                   help="how long the old key stays valid (default 7 days)")
    pr = dsub.add_parser("provision", parents=[common])
    pr.add_argument("device")
    pr.add_argument("--out", required=True, help="directory for config.json and key.bin")
    pr.add_argument("--pki", help="site PKI directory: also write the device's DER CA, "
                    "certificate and key for mutual TLS (issued if missing)")
    d.set_defaults(func=cmd_devices)

    c = sub.add_parser("command", parents=[common], help="send a signed downlink command")
    c.add_argument("device")
    c.add_argument("action", help="set_params | locate_now | reboot | clear_alarm | rotate_key"
                   " | rotate_cert")
    c.add_argument("params", nargs="*", help="name=value for set_params")
    c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the ack")
    c.add_argument("--grace-s", type=float, default=7 * 86400,
                   help="rotate_key: how long the old key stays valid (default 7 days)")
    c.add_argument("--pki", help="rotate_cert: the site PKI directory")
    c.add_argument("--broker-dir", help="rotate_cert: reload this broker's CRL afterwards")
    c.set_defaults(func=cmd_command)

    st = sub.add_parser("status", parents=[common], help="queue, rates, rejections, devices")
    st.add_argument("--interval", type=float, default=1.0, help="seconds to measure rates over")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    add_security_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        rc: int = args.func(args)
        return rc
    except ConfigError as e:
        print("config error: %s" % e, file=sys.stderr)
        return EXIT_CONFIG
    except GatewayError as e:
        logging.getLogger("gateway").debug("failed", exc_info=True)
        print("error: %s" % e, file=sys.stderr)
        return EXIT_ERROR
