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


def device_config(dev: Device, p: ProvisionConfig) -> dict[str, Any]:
    return {"device_id": dev.device_id, "kind": dev.kind,
            "broker": {"host": p.broker_host, "port": p.broker_port, "tls": p.broker_tls},
            "key_id": dev.current_key_id, "gps_period_s": p.gps_period_s,
            "hb_interval_s": p.hb_interval_s}


def write_files(dev: Device, p: ProvisionConfig, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    key_path = out / "key.bin"
    cfg_path.write_text(json.dumps(device_config(dev, p), indent=2) + "\n")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(dev.current_key)
    return [cfg_path, key_path]
