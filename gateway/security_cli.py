"""``python -m gateway pki …`` and ``python -m gateway broker-config``.

    pki --dir D init [--site NAME] [--gateway-id ID]... [--broker-host H]...
    pki --dir D issue ID [--role device|gateway|client] [--days N]
    pki --dir D revoke ID [--broker-dir B]   CRL re-signed, ACL deny, broker SIGHUP
    pki --dir D crl                          re-sign the CRL (before next_update)
    pki --dir D list
    broker-config --pki D --out B [--port 8883] [--bind ADDR] [--gateway-id ID]...
                  [--plaintext-port N] [--run-as-root]

Revocation takes effect at once: the CRL refuses the certificate's next TLS
handshake and the ACL's deny block stops its open connection (mosquitto
re-reads both on SIGHUP, which ``revoke --broker-dir`` sends). Revoking the
device's HMAC key in the registry (``devices revoke``) is separate and stops
its records at the gateway even while its certificate is valid.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gateway import brokerconf
from gateway.errors import GatewayError
from gateway.pki import DEVICE_DAYS, ROLES, Pki


def cmd_pki(args: argparse.Namespace) -> int:
    pki = Pki(args.dir)
    if args.pki_action == "init":
        pki.init(site=args.site, gateway_ids=tuple(args.gateway_id),
                 broker_hosts=tuple(args.broker_host or ("localhost", "127.0.0.1")))
        print("CA, broker and %d gateway certificate(s) in %s" % (len(args.gateway_id),
                                                                 pki.dir))
    elif args.pki_action == "issue":
        rec = pki.issue(args.id, role=args.role, days=args.days)
        print(json.dumps(rec.__dict__))
    elif args.pki_action == "revoke":
        rec = pki.revoke(args.id)
        out: dict[str, Any] = dict(rec.__dict__, crl=str(pki.crl_path))
        if args.broker_dir:
            bdir = Path(args.broker_dir)
            out["acl_deny_added"] = brokerconf.deny_in_acl(bdir, args.id)
            out["broker_reloaded"] = brokerconf.reload(bdir)
        print(json.dumps(out))
    elif args.pki_action == "crl":
        print(pki.write_crl())
    elif args.pki_action == "list":
        for r in pki.issued():
            print(json.dumps(r.__dict__))
    return 0


def cmd_broker_config(args: argparse.Namespace) -> int:
    pki = Pki(args.pki)
    revoked = tuple(sorted({r.cn for r in pki.issued() if r.revoked_at is not None}))
    s = brokerconf.BrokerSettings(
        pki_dir=Path(args.pki), out_dir=Path(args.out), tls_port=args.port, bind=args.bind,
        gateway_ids=tuple(args.gateway_id or ("gateway",)),
        plaintext_port=args.plaintext_port, run_as_root=args.run_as_root)
    conf = brokerconf.write(s, revoked)
    print("wrote %s and %s" % (conf, conf.parent / "acl"))
    return 0


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a port is a number, got %r" % text) from None
    if not 0 < n < 65536:
        raise argparse.ArgumentTypeError("a port is 1..65535, got %d" % n)
    return n


def add_commands(sub: Any) -> None:
    p = sub.add_parser("pki", help="the site CA: device, gateway and broker certificates")
    p.add_argument("--dir", required=True, help="the PKI directory (keep it private)")
    ps = p.add_subparsers(dest="pki_action", required=True)
    i = ps.add_parser("init", help="create the CA, the broker's and the gateways' certificates")
    i.add_argument("--site", default="fieldtrace edge site")
    i.add_argument("--gateway-id", action="append", default=[])
    i.add_argument("--broker-host", action="append",
                   help="names/IPs in the broker certificate (default localhost, 127.0.0.1)")
    s = ps.add_parser("issue", help="a certificate whose CN is the id")
    s.add_argument("id")
    s.add_argument("--role", choices=ROLES, default="device")
    s.add_argument("--days", type=int, default=DEVICE_DAYS)
    r = ps.add_parser("revoke", help="revoke at once (CRL, ACL deny, broker reload)")
    r.add_argument("id")
    r.add_argument("--broker-dir", help="the broker-config output directory to update")
    ps.add_parser("crl", help="re-sign the CRL")
    ps.add_parser("list", help="everything issued, with revocations")
    p.set_defaults(func=_guard(cmd_pki))

    b = sub.add_parser("broker-config", help="mosquitto config: mutual TLS, CRL, per-device ACL")
    b.add_argument("--pki", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--port", type=_port, default=8883)
    b.add_argument("--bind", default="0.0.0.0")
    b.add_argument("--gateway-id", action="append")
    b.add_argument("--plaintext-port", type=_port,
                   help="also a plaintext listener, on 127.0.0.1 only")
    b.add_argument("--run-as-root", action="store_true")
    b.set_defaults(func=_guard(cmd_broker_config))


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except GatewayError as e:
            print("error: %s" % e, file=__import__("sys").stderr)
            return 2
    return run
