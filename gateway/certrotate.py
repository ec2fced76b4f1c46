"""``python -m gateway command DEVICE rotate_cert --pki DIR [--broker-dir B]``.

Certificate rotation over the air (protocol SPEC 3.7): the site CA issues a
new key pair and certificate for the device while the old one stays valid;
the pair travels in a certificate bundle sealed with the device's HMAC key
(private key encrypted) and numbered by the command counter; the device
stores it, reconnects with it and acknowledges over that new connection.
Only then is the old certificate revoked (CRL re-signed, broker reloaded),
so no record in flight is refused at any point.
"""

from __future__ import annotations

import time
from pathlib import Path

from gateway import brokerconf
from gateway.commands import CommandError, CommandResult, next_command_id, publish_and_await_ack
from gateway.config import GatewayConfig
from gateway.pki import Pki
from gateway.registry import Registry
from protocol import bundle
from protocol.mac import Mac
from protocol.verify import DeviceKeys


def rotate_certificate(cfg: GatewayConfig, device: str, pki_dir: str,
                       broker_dir: str | None, timeout_s: float) -> CommandResult:
    registry = Registry(cfg.registry_path)
    dev = registry.get(device)
    if dev.revoked:
        raise CommandError("device %s is revoked" % device)
    pki = Pki(pki_dir)
    old = [r.serial for r in pki.issued() if r.cn == device and r.revoked_at is None]
    new = pki.issue_many([device], renewal=True)[0]
    files = pki.device_files(device)      # the newest pair (issue writes it in place)
    epoch, seq = next_command_id(cfg.store_path, device)
    payload = bundle.seal(Mac(dev.current_key), dev.current_key_id, device, epoch, seq,
                          files["cert.der"], files["key.der"])
    keys = DeviceKeys(dev.usable_keys(time.time()), dev.revoked)
    result, latency = publish_and_await_ack(cfg, device, "ft/v1/%s/cert" % device, payload,
                                            epoch, seq, keys, timeout_s)
    if result == "ok" and old:
        pki.revoke(device, serials=tuple(s for s in old if s != new.serial))
        if broker_dir:
            brokerconf.reload(Path(broker_dir))
    return CommandResult(device, "rotate_cert", epoch, seq, result, latency)
