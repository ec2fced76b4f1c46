"""Deploy to an ESP32 with mpremote: ``make flash PORT=/dev/ttyUSB0 DEVICE=rec-0001``.

    python -m firmware.flash --port /dev/ttyUSB0 --device rec-0001
        [--devices devices] [--build build/firmware/esp32] [--romfs] [--dry-run]

Copies the esp32 build (``make firmware BOARD=esp32``) to the board's
flash root and the device's provisioning files to ``/data``. With
``--romfs`` (``make flash ROMFS=1``) the code goes into the board's ROMFS
partition instead (``mpremote romfs deploy``), where it runs in place and
takes about half the heap that ``.mpy`` files on littlefs take (figures in
bench/README.md); it needs a MicroPython >= 1.25 built with a ROMFS
partition. The ``.mpy`` copies of an earlier plain flash are removed after
the image is written, because littlefs comes first on ``sys.path`` and
they would shadow it:

    devices/<id>/config.json   -> :/data/config.json
    devices/<id>/key.hex       -> :/data/key.hex     (or key.bin, 32 bytes)
    devices/<id>/board.json    -> :/data/board.json   (optional pin map)
    devices/<id>/*.der         -> :/data/             (TLS CA, client cert/key)

``devices/`` holds secrets: keep it out of git (one directory per device,
written by the provisioning tool or by hand, see firmware/README.md).
Needs ``pip install mpremote`` and the hardware; ``--dry-run`` prints the
mpremote commands instead of running them (that much is tested here).
"""

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from firmware.build import ROMFS_NAME

ROOT = Path(__file__).resolve().parent.parent


def check_device_dir(d, device_id):
    """Refuse to flash a device whose files are missing or inconsistent."""
    from firmware.app.config import Config, ConfigError

    cfg_path = d / "config.json"
    key_path = d / "key.hex"
    bin_path = d / "key.bin"          # what `python -m gateway devices provision` writes
    if not cfg_path.is_file() or not (key_path.is_file() or bin_path.is_file()):
        raise SystemExit("%s needs config.json and key.hex (or key.bin)" % d)
    try:
        cfg = Config(json.loads(cfg_path.read_text()))
    except (ValueError, ConfigError) as e:
        raise SystemExit("%s: %s" % (cfg_path, e))
    if cfg.device_id != device_id:
        raise SystemExit("%s is for %s, not %s" % (cfg_path, cfg.device_id, device_id))
    if key_path.is_file() and bin_path.is_file():
        # the device reads key.hex first: a stale one would shadow a new key.bin
        raise SystemExit("%s holds both key.hex and key.bin: keep only the current key" % d)
    if not key_path.is_file():
        if len(bin_path.read_bytes()) != 32:
            raise SystemExit("%s must hold 32 bytes" % bin_path)
        return
    key = key_path.read_text().strip()
    try:
        ok = len(key) == 64 and len(bytes.fromhex(key)) == 32     # fromhex skips spaces
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit("%s must hold 64 hex digits" % key_path)


def commands(port, device_id, devices_dir, build_dir, romfs=False):
    """The mpremote invocations, in order."""
    d = Path(devices_dir) / device_id
    check_device_dir(d, device_id)
    build = Path(build_dir)
    if not (build / "main.py").is_file():
        raise SystemExit("no esp32 build in %s: run make firmware BOARD=esp32" % build)
    base = ["mpremote", "connect", port]
    cmds = [base + ["fs", "mkdir", ":/data"]]
    if romfs:
        image = build / ROMFS_NAME
        if not image.is_file():
            raise SystemExit("no ROMFS image in %s: run make firmware BOARD=esp32" % build)
        cmds += [base + ["romfs", "deploy", str(image)],
                 base + ["fs", "rm", "-r", ":/protocol"],
                 base + ["fs", "rm", "-r", ":/firmware"]]
    else:
        cmds += [base + ["fs", "cp", "-r", str(build / "protocol"), ":"],
                 base + ["fs", "cp", "-r", str(build / "firmware"), ":"]]
    extras = sorted(p for p in d.iterdir()
                    if p.name in ("config.json", "key.hex", "key.bin", "board.json")
                    or p.suffix == ".der")
    for p in extras:
        if p.name in ("key.hex", "key.bin"):
            # the other form left on the board by an earlier flash would win
            # (key.hex is read first) or confuse: remove it (may not exist)
            other = "key.bin" if p.name == "key.hex" else "key.hex"
            cmds.append(base + ["fs", "rm", ":/data/" + other])
        cmds.append(base + ["fs", "cp", str(p), ":/data/" + p.name])
    cmds.append(base + ["fs", "cp", str(build / "main.py"), ":main.py"])
    cmds.append(base + ["reset"])
    return cmds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--devices", default=str(ROOT / "devices"))
    ap.add_argument("--build", default=str(ROOT / "build" / "firmware" / "esp32"))
    ap.add_argument("--romfs", action="store_true",
                    help="deploy the code to the ROMFS partition (runs in place)")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    for cmd in commands(args.port, args.device, args.devices, args.build, args.romfs):
        print(" ".join(shlex.quote(c) for c in cmd))
        if args.dry_run:
            continue
        res = subprocess.run(cmd)
        if res.returncode != 0 and cmd[3:5] not in (["fs", "mkdir"], ["fs", "rm"]):
            # /data may exist already; the other key form and old code copies may not
            sys.exit(res.returncode)


if __name__ == "__main__":
    main()
