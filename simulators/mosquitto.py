"""A real mosquitto broker on 127.0.0.1, with a generated config.

Used by the tests (one per session or per scenario), the benchmarks and
``make demo``. Nothing here relies on a system service: each broker gets its
own directory, config file, free port, log and (optionally) persistence.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


class BrokerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise BrokerError("mosquitto not found: apt-get install mosquitto")


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError("nothing listens on %s:%d" % (host, port)) from None
            time.sleep(0.02)


class Mosquitto:
    """One broker process. ``extra`` lines are appended to the config verbatim."""

    def __init__(self, workdir: Path, port: int | None = None, persistence: bool = False,
                 extra: str = "", name: str = "mosquitto",
                 config: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.extra = extra
        self.name = name
        self.config = config  # a complete config of the caller's (e.g. TLS + ACL)
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf_path = self.workdir / (name + ".conf")
        self.log_path = self.workdir / (name + ".log")

    def config_text(self) -> str:
        if self.config is not None:
            return self.config
        lines = []
        if os.geteuid() == 0:
            lines.append("user root")
        lines += [
            "listener %d 127.0.0.1" % self.port,
            "allow_anonymous true",
            "max_inflight_messages 100",
            "max_queued_messages 100000",
            "log_dest file %s" % self.log_path,
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.persistence:
            lines += ["persistence true", "persistence_location %s/" % self.workdir,
                      "persistence_file %s.db" % self.name, "autosave_interval 1"]
        if self.extra:
            lines.append(self.extra)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.conf_path.write_text(self.config_text())
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf_path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.port, timeout)
        except BrokerError:
            err = b""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read()
            self.stop()
            raise BrokerError("mosquitto did not start: %s %s" % (
                err.decode(errors="replace"), self.log_tail())) from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
