"""``devices provision``: the files a device needs for flashing.

``config.json`` (device id, kind, broker, key id, intervals) and ``key.bin``
(the 32 raw key bytes). The firmware defines the exact config fields; keep
``device_config`` the one place to align them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gateway.config import ProvisionConfig
from gateway.registry import Device


def device_config(dev: Device, p: ProvisionConfig, tls: bool = False) -> dict[str, Any]:
    """The firmware's config.json (firmware/app/config.py is the reader)."""
    broker: dict[str, Any] = {"host": p.broker_host, "port": p.broker_port}
    if tls or p.broker_tls:
        broker["tls"] = {"ca": "ca.der", "cert": "cert.der" if tls else None,
                         "key": "key.der" if tls else None,
                         "server_hostname": p.broker_host}
    return {"device_id": dev.device_id, "kind": dev.kind, "key_id": dev.current_key_id,
            "broker": broker,
            "params": {"gps_period_s": p.gps_period_s, "hb_interval_s": p.hb_interval_s}}


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_files(dev: Device, p: ProvisionConfig, out: Path,
                tls_files: dict[str, bytes] | None = None) -> list[Path]:
    """config.json, key.bin and, with ``tls_files`` (Pki.device_files), the DER
    CA, certificate and key that MicroPython's mbedTLS loads."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    key_path = out / "key.bin"
    cfg_path.write_text(json.dumps(device_config(dev, p, tls_files is not None), indent=2)
                        + "\n")
    _write_private(key_path, dev.current_key)
    stale = out / "key.hex"         # the firmware reads key.hex first: it would shadow key.bin
    if stale.exists():
        stale.unlink()
    written = [cfg_path, key_path]
    for name in ("ca.der", "cert.der", "key.der"):
        if tls_files is not None:
            _write_private(out / name, tls_files[name])
            written.append(out / name)
    return written
