"""Heap the firmware's code takes, as `.mpy` files vs. run in place from a
ROMFS image, on the 64-bit unix port and on a 32-bit MicroPython.

    .venv/bin/python bench/firmware_heap_romfs.py

Builds the unix firmware (``make firmware BOARD=unix``: ``.mpy`` files and
``firmware.romfs``), then imports every module after a collection and prints
the heap each adds:

- unix port (64-bit), ``.mpy`` files: bytecode, qstrs and function records
  all go into the heap;
- unix port, ROMFS image mounted with ``vfs.VfsRom``: bytecode runs in place;
  the image itself is allocated before the first figure is taken and is not
  counted (on a board it is memory-mapped flash);
- MicroPython 1.29 for WebAssembly (32-bit pointers, like an ESP32), both
  ways, when ``node`` and ``npm`` are here: ``npm install`` puts the
  ``@micropython/micropython-webassembly-pyscript`` package under
  ``build/bench-node``. Its ROMFS image lies outside the GC heap, as a
  memory-mapped partition does. This port has no sockets, so the two unix
  board modules are left out of every column's "app + protocol" total.

Prints one row per module and the totals.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.build import ROMFS_NAME, build  # noqa: E402
from firmware.devtools import ROOT, micropython_binary  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from firmware_heap_anatomy import MODULES as ANATOMY_MODULES  # noqa: E402

# the anatomy bench's import order, minus the two unix board modules: the
# WebAssembly port has no sockets, so they are measured on unix only
UNIX_ONLY = ["firmware.boards.tcplink", "firmware.boards.unix"]
MODULES = [m for m in ANATOMY_MODULES if m not in UNIX_ONLY]
WASM_PACKAGE = "@micropython/micropython-webassembly-pyscript@1.29.0-6"

# One script for both ports; %(...)s is filled in per run. Prints JSON.
SCRIPT = """
import gc, sys, json, struct, hashlib, binascii, time
%(prelude)s
gc.collect()
start = prev = gc.mem_alloc()
out = {"modules": {}}
for m in %(modules)r:
    __import__(m)
    gc.collect()
    now = gc.mem_alloc()
    out["modules"][m] = now - prev
    prev = now
out["platform"] = sys.implementation._machine
print("RESULT " + json.dumps(out))
"""

UNIX_MPY = "import socket, select, ssl, os\nsys.path.insert(0, %r)"
UNIX_ROMFS = ("import socket, select, ssl, os, vfs\n"
              "image = open(%r, 'rb').read()\n"
              "vfs.mount(vfs.VfsRom(image), '/rom')\nsys.path.insert(0, '/rom')")
WASM_MPY = "sys.path.insert(0, '/fw')"
WASM_ROMFS = "sys.path.insert(0, '/rom')"

NODE_RUNNER = """
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "fs"; import path from "path";
const [build, romfs, script] = process.argv.slice(2);
const options = { stdout: (d) => process.stdout.write(d + "\\n") };
if (romfs !== "-") options.romfs = new Uint8Array(fs.readFileSync(romfs));
const mp = await loadMicroPython(options);
function copy(dir, dest) {
  mp.FS.mkdirTree(dest);
  for (const n of fs.readdirSync(dir)) {
    const p = path.join(dir, n);
    if (fs.statSync(p).isDirectory()) copy(p, dest + "/" + n);
    else if (n.endsWith(".mpy")) mp.FS.writeFile(dest + "/" + n, fs.readFileSync(p));
  }
}
if (build !== "-") copy(build, "/fw");
mp.runPython(fs.readFileSync(script, "utf8"));
"""


def parse(stdout: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit("no result in:\n" + stdout[-2000:])


def run_unix(work: Path, prelude: str, modules: list[str]) -> dict:
    script = work / "unix_heap.py"
    script.write_text(SCRIPT % {"prelude": prelude, "modules": modules})
    res = subprocess.run([micropython_binary(), "-X", "heapsize=1m", str(script)],
                         capture_output=True, text=True, timeout=120, cwd=str(work))
    return parse(res.stdout + res.stderr)


def wasm_ready() -> Path | None:
    """The node_modules directory with MicroPython for WebAssembly, or None."""
    if not (shutil.which("node") and shutil.which("npm")):
        return None
    where = ROOT / "build" / "bench-node"
    pkg = where / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
    if not pkg.is_dir():
        where.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["npm", "install", "--no-save", "--prefix", str(where),
                              WASM_PACKAGE], capture_output=True, text=True, timeout=300)
        if res.returncode:
            print("npm install %s failed; 32-bit columns skipped:\n%s"
                  % (WASM_PACKAGE, res.stderr[-500:]))
            return None
    return where


def run_wasm(where: Path, work: Path, build_dir: str, romfs: str, prelude: str) -> dict:
    runner = where / "heap_runner.mjs"
    runner.write_text(NODE_RUNNER)
    script = work / "wasm_heap.py"
    script.write_text(SCRIPT % {"prelude": prelude, "modules": MODULES})
    res = subprocess.run(["node", str(runner), build_dir, romfs, str(script)],
                         capture_output=True, text=True, timeout=120, cwd=str(where))
    return parse(res.stdout + res.stderr)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="heap-romfs-") as tmp:
        work = Path(tmp)
        fw, _ = build("unix", work / "fw")
        image = fw / ROMFS_NAME
        everything = MODULES + UNIX_ONLY
        cols = {"unix64 .mpy": run_unix(work, UNIX_MPY % str(fw), everything),
                "unix64 ROMFS": run_unix(work, UNIX_ROMFS % str(image), everything)}
        where = wasm_ready()
        if where is not None:
            cols["wasm32 .mpy"] = run_wasm(where, work, str(fw), "-", WASM_MPY)
            cols["wasm32 ROMFS"] = run_wasm(where, work, "-", str(image), WASM_ROMFS)
        names = list(cols)
        print("heap added by each import after gc.collect(), bytes; image %d bytes"
              % image.stat().st_size)
        print("  %-26s" % "module" + "".join("%14s" % n for n in names))
        for m in everything:
            row = [cols[n]["modules"].get(m) for n in names]
            print("  %-26s" % m + "".join("%14s" % ("-" if v is None else v) for v in row))
        for label, mods in (("app + protocol", MODULES), ("all (unix board)", everything)):
            row = []
            for n in names:
                got = cols[n]["modules"]
                row.append("%.1f KiB" % (sum(got[m] for m in mods) / 1024)
                           if all(m in got for m in mods) else "-")
            print("  %-26s" % label + "".join("%14s" % v for v in row))


if __name__ == "__main__":
    main()
