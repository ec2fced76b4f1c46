"""Test and benchmark helpers: simulated devices, a publisher, an upstream collector.

Real MQTT throughout (paho against mosquitto); devices sign with
``protocol.message.encode``. Used by tests/test_gateway_*.py and bench/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol import message
from protocol.auth import Signer
from protocol.codec import CLASS_RECORDER, CLASS_WRISTBAND
from protocol.topics import (
    KIND_ACK, KIND_ALARM, KIND_GPS, KIND_HB, KIND_STATUS, topic_for,
)

ROOT = Path(__file__).resolve().parent.parent


def gps_body(i: int = 0) -> dict[str, Any]:
    return {"lat_e7": 359_900_000 + i, "lon_e7": 1_194_000_000 + i, "alt_m": 40,
            "speed_cms": 120, "course_cdeg": 9000, "hdop_x10": 9, "fix": 2, "sats": 11,
            "gnss": 0x09, "age_s": 0}


def alarm_body(alarm: str = "sos") -> dict[str, Any]:
    b = {"alarm": alarm, "value": 0, "has_position": True}
    b.update(gps_body())
    return b


class Device:
    """A simulated device: a key, a boot epoch and one sequence counter."""

    def __init__(self, device_id: str, key: bytes | None = None, key_id: int = 0,
                 epoch: int = 1, kind: str = "recorder") -> None:
        self.device_id = device_id
        self.key = key or os.urandom(32)
        self.key_id = key_id
        self.kind = kind
        self.epoch = epoch
        self.seq = 0
        self.signer = Signer(device_id, self.key, key_id)

    def msg(self, kind: int, body: dict[str, Any], ts: int | None = None, backlog: bool = False,
            unsynced: bool = False, seq: int | None = None) -> tuple[str, bytes]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        ts = int(time.time()) if ts is None else ts
        return (topic_for(self.device_id, kind),
                message.encode(self.signer, kind, self.epoch, seq, ts, body, backlog, unsynced))

    def gps(self, **kw: Any) -> tuple[str, bytes]:
        return self.msg(KIND_GPS, gps_body(self.seq), **kw)

    def alarm(self, alarm: str = "sos", **kw: Any) -> tuple[str, bytes]:
        return self.msg(KIND_ALARM, alarm_body(alarm), **kw)

    def heartbeat(self, hb_interval_s: int = 60, **kw: Any) -> tuple[str, bytes]:
        hb = message.sample_heartbeat(CLASS_RECORDER if self.kind == "recorder"
                                      else CLASS_WRISTBAND)
        hb["hb_interval_s"] = hb_interval_s
        return self.msg(KIND_HB, hb, **kw)

    def status(self, state: str = "online", hb_interval_s: int = 60,
               **kw: Any) -> tuple[str, bytes]:
        cls = CLASS_RECORDER if self.kind == "recorder" else CLASS_WRISTBAND
        return self.msg(KIND_STATUS, {"state": state, "device_class": cls,
                                      "hb_interval_s": hb_interval_s}, **kw)

    def ack(self, cmd_epoch: int, cmd_seq: int, result: str = "ok",
            **kw: Any) -> tuple[str, bytes]:
        return self.msg(KIND_ACK, {"cmd_epoch": cmd_epoch, "cmd_seq": cmd_seq, "result": result},
                        **kw)


class Publisher:
    """A QoS 1 paho publisher (clean session) that can wait for its PUBACKs."""

    def __init__(self, port: int, client_id: str = "", host: str = "127.0.0.1") -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(host, port, 30)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.infos.append(self.client.publish(topic, payload, qos=qos))

    def publish_all(self, msgs: list[tuple[str, bytes]], qos: int = 1) -> None:
        for t, p in msgs:
            self.publish(t, p, qos)

    def wait(self, timeout: float = 30.0) -> bool:
        """True once every message got its PUBACK (paho resends across reconnects)."""
        deadline = time.monotonic() + timeout
        for info in self.infos:
            while not info._published:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Collector:
    """Subscribes to ``ft/up/v1/#`` upstream and keeps every record received."""

    def __init__(self, port: int, client_id: str = "collector", host: str = "127.0.0.1",
                 topic: str = "ft/up/v1/#", on_batch: Callable[[str, dict[str, Any]], None]
                 | None = None) -> None:
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.batches: list[tuple[str, dict[str, Any]]] = []
        self.on_batch = on_batch
        self.ready = threading.Event()
        self.topic = topic
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(host, port, 30)
        self.client.loop_start()
        if not self.ready.wait(10):
            raise RuntimeError("collector did not subscribe")

    def _on_connect(self, client: mqtt.Client, *a: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        with self.lock:
            self.batches.append((msg.topic, doc))
            self.records.extend(doc["records"])
        if self.on_batch is not None:
            self.on_batch(msg.topic, doc)

    def ids(self, kind: str | None = None) -> list[str]:
        with self.lock:
            return [r["id"] for r in self.records if kind is None or r["kind"] == kind]

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.records)

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.snapshot()):
                return True
            time.sleep(0.02)
        return pred(self.snapshot())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def write_config(path: Path, local_port: int, upstream_port: int, gateway_id: str = "gw-test",
                 extra: str = "", **sections: dict[str, Any]) -> Path:
    """A gateway TOML for tests and benchmarks; ``sections`` override keys per table."""
    tables: dict[str, dict[str, Any]] = {
        "gateway": {"id": gateway_id, "store_path": "state/gateway.db",
                    "registry_path": "state/registry.json", "log_level": "info"},
        "local": {"host": "127.0.0.1", "port": local_port, "client_id": gateway_id + "-in"},
        "upstream": {"host": "127.0.0.1", "port": upstream_port,
                     "client_id": gateway_id + "-up", "backoff_initial_s": 0.1,
                     "backoff_max_s": 1.0, "connect_timeout_s": 2.0},
    }
    for name, vals in sections.items():
        tables.setdefault(name.replace("__", "."), {}).update(vals)
    lines = []
    for name, vals in tables.items():
        lines.append("[%s]" % name)
        for k, v in vals.items():
            lines.append("%s = %s" % (k, json.dumps(v)))
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + extra)
    return path


class RunningGateway:
    """An in-process gateway on its own thread (``with RunningGateway(cfg) as gw``)."""

    def __init__(self, cfg: Any, clock: Callable[[], float] = time.time) -> None:
        from gateway.service import Gateway

        self.gw = Gateway(cfg, clock)
        self.thread = threading.Thread(target=self.gw.run, name="gateway", daemon=True)

    def __enter__(self) -> Any:
        self.thread.start()
        for c in self.gw.conns:
            if not c.subscribed.wait(15):
                raise RuntimeError("gateway did not subscribe")
        return self.gw

    def __exit__(self, *exc: object) -> None:
        self.gw.stop()
        self.thread.join(20)


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


class GatewayProcess:
    """``python -m gateway run`` as a child process (so that tests can SIGKILL it)."""

    def __init__(self, config: Path, log: Path | None = None) -> None:
        self.config = config
        self.log = log or config.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self) -> GatewayProcess:
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config",
                                          str(self.config)], stdout=logf, stderr=logf, env=env,
                                         cwd=str(ROOT))
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self.proc = None
        return rc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_subscribed(self, timeout: float = 15.0) -> bool:
        """Wait for this run's "subscribed" log line."""
        start = self._log_start
        return wait_until(lambda: b'"msg": "subscribed"' in self.log.read_bytes()[start:],
                          timeout)
