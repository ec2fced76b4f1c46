"""mosquitto configuration for an edge box: mutual TLS and per-device ACLs.

What it enforces (mosquitto 2.0):

* One TLS listener; a plaintext listener only when asked for, and then on
  loopback only (for a local tool, never for devices).
* ``require_certificate`` + ``use_identity_as_username``: the certificate's
  CN is the MQTT username; ``use_username_as_clientid`` makes it the client
  id too, so a device cannot take over another device's session.
* ``crlfile``: revoked certificates are refused at the handshake (mosquitto
  reads the CRL at start and on SIGHUP: the ``revoke`` CLI signals it).
* ACL: a device writes only ``ft/v1/<its id>/{gps,hb,alarm,status,ack}`` and
  reads only ``ft/v1/<its id>/cmd`` and ``…/cert`` (certificate bundles);
  only the gateway reads everything and writes commands and bundles.
  mosquitto refuses ``%u`` substitution for usernames with ``+``, ``#`` or
  ``/`` — and such ids never get certificates anyway.

``max_inflight_messages`` stays within the 128-record replay window: after a
gateway crash the broker redelivers that many committed but unacknowledged
records, and the gateway must be able to tell them from replays.

A publish denied by the ACL still gets its PUBACK under MQTT 3.1.1; the
message is silently dropped. Tests therefore check what arrives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError
from protocol.replay import WINDOW as REPLAY_WINDOW
from protocol.topics import is_valid_device_id

DEVICE_WRITE_KINDS = ("gps", "hb", "alarm", "status", "ack")


@dataclass(frozen=True)
class BrokerSettings:
    pki_dir: Path
    out_dir: Path
    tls_port: int = 8883
    bind: str = "0.0.0.0"
    gateway_ids: tuple[str, ...] = ("gateway",)
    plaintext_port: int | None = None   # loopback only; None = no plaintext listener
    persistence: bool = True
    run_as_root: bool = False
    max_inflight: int = 100
    max_queued: int = 100000


def acl_text(gateway_ids: tuple[str, ...], revoked: tuple[str, ...] = ()) -> str:
    """The ACL file. ``revoked`` identities get a deny-all block: mosquitto
    re-reads the ACL on SIGHUP, so a revoked device's *open* connection stops
    passing anything at once (the CRL refuses its next handshake)."""
    lines = ["# fieldtrace ACL: written by `python -m gateway broker-config`; do not edit",
             "# gateways: read every device topic, write commands"]
    for gid in gateway_ids:
        if not is_valid_device_id(gid):
            raise GatewayError("gateway id %r is not a valid id" % gid, "config_invalid")
        lines += ["user %s" % gid, "topic read ft/v1/#", "topic write ft/v1/+/cmd",
                  "topic write ft/v1/+/cert", ""]
    lines.append("# every device (username = certificate CN = client id): its own topics only")
    lines += ["pattern write ft/v1/%%u/%s" % k for k in DEVICE_WRITE_KINDS]
    lines.append("pattern read ft/v1/%u/cmd")
    lines.append("pattern read ft/v1/%u/cert")
    for cn in revoked:
        lines += ["", "# revoked", "user %s" % cn, "topic deny #"]
    return "\n".join(lines) + "\n"


def config_text(s: BrokerSettings) -> str:
    if not 1 <= s.max_inflight <= REPLAY_WINDOW:
        # after a gateway crash the broker redelivers up to this many committed but
        # unacknowledged records; beyond the window they would count as replayed
        raise GatewayError("max_inflight must be 1..%d (the replay window), got %d"
                           % (REPLAY_WINDOW, s.max_inflight), "config_invalid")
    pki = s.pki_dir.resolve()
    out = s.out_dir.resolve()
    lines = ["# fieldtrace edge broker: written by `python -m gateway broker-config`"]
    if s.run_as_root:
        lines.append("user root")
    lines += [
        "per_listener_settings false",
        "allow_anonymous false",
        "acl_file %s" % (out / "acl"),
        "max_inflight_messages %d" % s.max_inflight,
        "max_queued_messages %d" % s.max_queued,
        "log_dest file %s" % (out / "mosquitto.log"),
        "pid_file %s" % (out / "mosquitto.pid"),
        "log_type error", "log_type warning", "log_type notice",
        "connection_messages true",
    ]
    if s.persistence:
        lines += ["persistence true", "persistence_location %s/" % out,
                  "autosave_interval 1"]
    lines += [
        "",
        "listener %d %s" % (s.tls_port, s.bind),
        "cafile %s" % (pki / "ca.crt"),
        "certfile %s" % (pki / "broker.crt"),
        "keyfile %s" % (pki / "broker.key"),
        "crlfile %s" % (pki / "crl.pem"),
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
    ]
    if s.plaintext_port is not None:
        lines += ["", "# plaintext, loopback only, asked for explicitly",
                  "listener %d 127.0.0.1" % s.plaintext_port]
    return "\n".join(lines) + "\n"


def deny_in_acl(out_dir: Path, cn: str) -> bool:
    """Add a deny-all block for ``cn`` to the broker's ACL (atomically); False if present."""
    acl = out_dir / "acl"
    text = acl.read_text()
    block = "user %s\ntopic deny #\n" % cn
    if block in text:
        return False
    tmp = acl.with_suffix(".tmp")
    tmp.write_text(text + "\n# revoked\n" + block)
    os.replace(tmp, acl)
    return True


def reload(out_dir: Path) -> bool:
    """SIGHUP the broker whose pid file is in ``out_dir``: it re-reads CRL and ACL."""
    import signal
    try:
        pid = int((out_dir / "mosquitto.pid").read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return False
    return True


def write(s: BrokerSettings, revoked: tuple[str, ...] = ()) -> Path:
    """Write ``mosquitto.conf`` and ``acl`` into ``out_dir``; returns the conf path."""
    for name in ("ca.crt", "broker.crt", "broker.key", "crl.pem"):
        if not (s.pki_dir / name).exists():
            raise GatewayError("%s missing in %s: run `pki init`" % (name, s.pki_dir),
                               "config_invalid")
    s.out_dir.mkdir(parents=True, exist_ok=True)
    (s.out_dir / "acl").write_text(acl_text(s.gateway_ids, revoked))
    conf = s.out_dir / "mosquitto.conf"
    conf.write_text(config_text(s))
    os.chmod(conf, 0o644)
    return conf
