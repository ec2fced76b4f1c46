"""The gateway against real mosquitto brokers (local and upstream)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.cli import main as cli_main
from gateway.config import GatewayConfig, load_config
from gateway.registry import Registry
from gateway.testing import (
    Collector, Device, Publisher, RunningGateway, wait_until, write_config,
)
from protocol import message
from protocol.auth import Signer
from protocol.topics import KIND_ACK, KIND_CMD, topic_for
from protocol.verify import DeviceKeys, verify
from simulators.mosquitto import Mosquitto, free_port

pytestmark = pytest.mark.broker


class Site:
    """A local broker, an upstream broker with a collector, a config and a registry."""

    def __init__(self, tmp: Path, local_persistence: bool = False, **sections: Any) -> None:
        self.tmp = tmp
        self.local = Mosquitto(tmp / "local", name="local", persistence=local_persistence).start()
        self.up = Mosquitto(tmp / "up", name="up", persistence=True).start()
        self.collector = Collector(self.up.port, client_id="collector-" + tmp.name[-20:])
        self.cfg_path = write_config(tmp / "gw.toml", self.local.port, self.up.port, **sections)
        self.cfg: GatewayConfig = load_config(self.cfg_path)
        self.registry = Registry(self.cfg.registry_path)
        self.pubs: list[Publisher] = []

    def device(self, device_id: str, kind: str = "recorder", **kw: Any) -> Device:
        d = Device(device_id, kind=kind, **kw)
        self.registry.add(device_id, kind, d.key, d.key_id)
        return d

    def publisher(self) -> Publisher:
        p = Publisher(self.local.port)
        self.pubs.append(p)
        return p

    def close(self) -> None:
        for p in self.pubs:
            p.close()
        self.collector.close()
        self.local.stop()
        self.up.stop()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    yield s
    s.close()


def device_ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in records if r["kind"] != "liveness"]



def command_listener(site: Site, device: str, on_message: Any) -> mqtt.Client:
    """A device's MQTT session that hands each command it receives to ``on_message``."""
    devc = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device)
    devc.on_message = on_message
    devc.connect("127.0.0.1", site.local.port)
    devc.subscribe(topic_for(device, KIND_CMD), qos=1)
    devc.loop_start()
    return devc

def test_records_arrive_upstream_in_the_fixed_format(site: Site) -> None:
    dev = site.device("rec001")
    msgs = [dev.status("online"), *[dev.gps() for _ in range(20)], dev.alarm(), dev.heartbeat()]
    with RunningGateway(site.cfg):
        pub = site.publisher()
        pub.publish_all(msgs)
        assert pub.wait(10)
        assert site.collector.wait_for(lambda r: len(device_ids(r)) == len(msgs), 15)
    batches = site.collector.batches
    assert {t for t, _ in batches} <= {"ft/up/v1/gw-test/alarm", "ft/up/v1/gw-test/status",
                                       "ft/up/v1/gw-test/telemetry"}
    assert all(doc["gateway"] == "gw-test" for _, doc in batches)
    recs = {r["id"]: r for r in site.collector.snapshot()}
    gps = recs["rec001:1:2"]
    assert gps["kind"] == "gps" and gps["device"] == "rec001" and "lat_e7" in gps["body"]
    assert gps["envelope"] and isinstance(gps["received_at"], float)
    live = [r for r in recs.values() if r["kind"] == "liveness"]
    assert live and live[0]["state"] == "online" and live[0]["id"].startswith(
        "liveness:gw-test:rec001:")
    per_device = [r["seq"] for r in site.collector.snapshot() if r["kind"] == "gps"]
    assert per_device == sorted(per_device)                   # order kept per device


def test_duplicates_are_dropped_and_counted(site: Site) -> None:
    dev = site.device("rec001")
    m = dev.gps()
    with RunningGateway(site.cfg) as gw:
        pub = site.publisher()
        pub.publish_all([m, m, m])
        assert pub.wait(10)
        assert wait_until(lambda: gw.snapshot.get("duplicate") == 2, 10)
        assert site.collector.wait_for(lambda r: device_ids(r) == ["rec001:1:1"], 10)


def test_bad_input_corpus_rejected_by_reason_while_legit_traffic_flows(site: Site) -> None:
    good = site.device("rec001", epoch=2)
    site.device("rec002")
    revoked = site.device("rec003")
    site.registry.revoke("rec003")
    legit = [good.gps() for _ in range(600)]
    t, p = good.gps()
    legit.append((t, p))
    forged = bytearray(p)
    forged[-3] ^= 0x40
    corpus = [
        (t, bytes(forged), "bad_signature"),
        (*Device("rec001", epoch=2).gps(), "bad_signature"),                 # wrong key
        (*Device("rec001", key=good.key, epoch=1).gps(), "replayed"),       # older boot
        ("ft/v1/rec002/gps", p, "bad_signature"),                            # re-topiced
        (*Device("rec999").gps(), "unknown_device"),
        (*revoked.gps(), "device_revoked"),
        (t, p[:25], "truncated"),
        (t, b"\x11" * (1 << 20), "too_large"),
        (t, bytes(64), "version_unsupported"),                                # random bytes
        ("ft/v1/x/gps", p, "device_id_invalid"),                              # invalid topic
        ("ft/v1/rec001/bogus", p, "kind_unknown"),
    ]
    with RunningGateway(site.cfg) as gw:
        pub = site.publisher()
        stop = threading.Event()

        def stream() -> None:
            for i, (lt, lp) in enumerate(legit):
                pub.publish(lt, lp)
                if i % 50 == 0:
                    time.sleep(0.02)

        th = threading.Thread(target=stream)
        th.start()
        assert wait_until(lambda: gw.snapshot.get("accepted", 0) > 0, 10)
        bad = Publisher(site.local.port)
        site.pubs.append(bad)
        bad.publish_all([(ct, cp) for ct, cp, _ in corpus])
        assert bad.wait(20)
        th.join()
        stop.set()
        assert pub.wait(20)
        want = {"rejected:" + r: 0 for _, _, r in corpus}
        for _, _, r in corpus:
            want["rejected:" + r] += 1
        assert wait_until(lambda: {k: gw.snapshot.get(k, 0) for k in want} == want, 10), (
            gw.snapshot)
        assert site.collector.wait_for(lambda r: len(device_ids(r)) == len(legit), 20)
    ids = device_ids(site.collector.snapshot())
    assert sorted(ids) == sorted("rec001:2:%d" % i for i in range(1, len(legit) + 1))
    from gateway.store import Reader
    q = Reader(site.cfg.store_path).quarantine(100)
    assert {row[1] for row in q} == {r for _, _, r in corpus}
    too_large = [row for row in q if row[1] == "too_large"]
    assert "%d bytes" % (1 << 20) in str(too_large[0]), too_large   # its real size


def test_command_is_signed_delivered_and_its_ack_reported_and_forwarded(site: Site) -> None:
    dev = site.device("rec001")
    got: list[dict[str, Any]] = []
    keys = DeviceKeys({dev.key_id: dev.key})

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        v = verify(msg.topic, msg.payload, lambda d: keys, lambda d, ln: None, int(time.time()))
        assert v.ok, v
        got.append(v.envelope.body)
        ack = message.encode(Signer("rec001", dev.key, dev.key_id), KIND_ACK, 1, 100,
                             int(time.time()), {"cmd_epoch": v.envelope.epoch,
                                                "cmd_seq": v.envelope.seq, "result": "ok"})
        client.publish(topic_for("rec001", KIND_ACK), ack, qos=1)

    devc = command_listener(site, "rec001", on_message)
    try:
        with RunningGateway(site.cfg):
            from gateway.commands import send_command
            res = send_command(site.cfg, "rec001", "set_params", {"gps_period_s": 15}, 10)
            assert res.result == "ok"
            assert got == [{"action": "set_params", "params": {"gps_period_s": 15}}]
            assert site.collector.wait_for(
                lambda r: any(x["kind"] == "ack" and x["body"]["cmd_seq"] == res.seq
                              for x in r), 10)
    finally:
        devc.disconnect()
        devc.loop_stop()


def test_last_will_marks_device_offline_upstream(tmp_path: Path) -> None:
    site = Site(tmp_path, liveness={"debounce_s": 0.2})
    dev = site.device("rec001")
    _, will = dev.status("offline")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rec001-dev")
    c.will_set(topic_for("rec001", 4), will, qos=1)
    with RunningGateway(site.cfg):
        c.connect("127.0.0.1", site.local.port)
        c.loop_start()
        c.publish(*dev.gps(), qos=1).wait_for_publish(5)
        assert site.collector.wait_for(
            lambda r: any(x.get("state") == "online" for x in r), 10)
        c._sock_close()                       # drop the connection: the broker sends the will
        assert site.collector.wait_for(
            lambda r: any(x.get("state") == "offline" and x["reason"] == "last_will"
                          for x in r), 20)
        c.loop_stop()
    site.close()


def test_metrics_endpoint_serves_gateway_figures(tmp_path: Path) -> None:
    port = free_port()
    s = Site(tmp_path, metrics={"port": port})
    try:
        dev = s.device("rec001")
        from gateway.metrics import serve
        with RunningGateway(s.cfg) as gw:
            serve(gw)
            pub = s.publisher()
            pub.publish_all([dev.gps() for _ in range(5)])
            assert pub.wait(10)
            assert wait_until(lambda: gw.snapshot.get("accepted") == 5, 10)
            body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                          timeout=5).read().decode()
        assert "fieldtrace_gateway_accepted_total 5.0" in body
        assert 'fieldtrace_gateway_queue_depth{lane="alarm"}' in body
    finally:
        s.close()


def test_cli_devices_provision_and_status(site: Site, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ["--config", str(site.cfg_path)]
    assert cli_main(["devices", "add", "wb0001", "--kind", "wristband", *cfg]) == 0
    assert cli_main(["devices", "rotate-key", "wb0001", "--grace-s", "60", *cfg]) == 0
    assert cli_main(["devices", "provision", "wb0001", "--out", str(tmp_path / "fl"), *cfg]) == 0
    conf = json.loads((tmp_path / "fl" / "config.json").read_text())
    assert conf["device_id"] == "wb0001" and conf["kind"] == "wristband" and conf["key_id"] == 1
    assert conf["broker"] == {"host": "127.0.0.1", "port": site.local.port}
    assert (tmp_path / "fl" / "key.bin").read_bytes() == site.registry.get("wb0001").current_key
    from firmware.app.config import load_config, load_key
    from firmware.app.store import FlashStore
    flash = FlashStore(str(tmp_path / "fl"))      # what the firmware reads, it accepts
    assert load_config(flash).device_id == "wb0001"
    assert load_key(flash) == site.registry.get("wb0001").current_key
    capsys.readouterr()
    assert cli_main(["devices", "show", "wb0001", *cfg]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["kind"] == "wristband" and shown["current_key_id"] == 1
    assert [k["key_id"] for k in shown["keys"]] == [0, 1] and shown["keys"][0]["valid_until"]
    for k in site.registry.get("wb0001").keys:
        assert k.key.hex() not in out                    # key material is never printed
    assert cli_main(["devices", "revoke", "wb0001", *cfg]) == 0
    capsys.readouterr()
    assert cli_main(["devices", "list", *cfg]) == 0
    assert "REVOKED" in capsys.readouterr().out
    assert cli_main(["devices", "show", "nope", *cfg]) == 1
    with RunningGateway(site.cfg):
        pass
    capsys.readouterr()
    assert cli_main(["status", "--json", "--interval", "0", *cfg]) == 0
    f = json.loads(capsys.readouterr().out)
    assert set(f["lanes"]) == {"alarm", "status", "telemetry"} and "rejected" in f
    bad = tmp_path / "bad.toml"
    bad.write_text(site.cfg_path.read_text() + '\n[metrics]\nport = "x"\n')
    assert cli_main(["status", "--config", str(bad)]) == 2
    assert "metrics.port: must be an integer" in capsys.readouterr().err


def test_status_reports_depth_oldest_age_rates_rejections_and_device_states(
        tmp_path: Path) -> None:
    from gateway.cli import status_figures

    s = Site(tmp_path)
    try:
        s.up.stop()                                   # upstream down: records stay queued
        dev = s.device("rec001")
        with RunningGateway(s.cfg) as gw:
            pub = s.publisher()
            pub.publish_all([dev.gps() for _ in range(20)] + [dev.alarm("sos")])
            t, p = dev.gps()
            pub.publish(t, p[:-1] + bytes([p[-1] ^ 1]))      # forged tag
            assert wait_until(lambda: gw.snapshot.get("accepted", 0) == 21, 10), gw.snapshot
            time.sleep(0.3)
            stream = threading.Thread(target=lambda: [
                (pub.publish(*dev.gps()), time.sleep(0.01)) for _ in range(150)])
            stream.start()
            f = status_figures(s.cfg, 1.0)
            stream.join()
        assert f["rates_per_s"]["accepted"] > 20           # ~100/s during the interval
        assert f["rates_per_s"]["forwarded"] == 0.0
        tele, alarm = f["lanes"]["telemetry"], f["lanes"]["alarm"]
        assert tele["depth"] >= 20 and tele["oldest_age_s"] >= 0.3
        assert alarm["depth"] == 1 and alarm["oldest_age_s"] >= 0.3
        assert f["rejected"] == {"bad_signature": 1}
        assert f["devices"]["online"] == 1
        assert f["device_states"]["rec001"]["state"] == "online"
    finally:
        s.close()


def test_rotate_key_over_the_air_new_and_old_key_both_accepted(site: Site) -> None:
    from protocol.mac import Mac

    dev = site.device("rec001", key_id=15)
    new: dict[str, Any] = {}
    keys = DeviceKeys({dev.key_id: dev.key})

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        v = verify(msg.topic, msg.payload, lambda d: keys, lambda d, ln: None, int(time.time()))
        assert v.ok and v.envelope.body["action"] == "rotate_key", v
        new["key"] = message.unwrap_rotate_key(Mac(dev.key), "rec001", v.envelope)
        new["kid"] = v.envelope.body["new_key_id"]
        ack = message.encode(Signer("rec001", new["key"], new["kid"]), KIND_ACK, 1, 50,
                             int(time.time()), {"cmd_epoch": v.envelope.epoch,
                                                "cmd_seq": v.envelope.seq, "result": "ok"})
        client.publish(topic_for("rec001", KIND_ACK), ack, qos=1)

    devc = command_listener(site, "rec001", on_message)
    try:
        with RunningGateway(site.cfg) as gw:
            from gateway.commands import send_command
            res = send_command(site.cfg, "rec001", "rotate_key", {}, 10, grace_s=3600)
            assert res.result == "ok" and new["kid"] == 0           # key ids wrap 15 -> 0
            assert site.registry.get("rec001").current_key == new["key"]
            old = [k for k in site.registry.get("rec001").keys if k.key_id == 15][0]
            assert time.time() + 3500 < old.valid_until < time.time() + 3700   # grace from ack
            rotated = Device("rec001", key=new["key"], key_id=0, epoch=1)
            rotated.seq = 100
            pub = site.publisher()
            pub.publish_all([dev.gps(), rotated.gps()])            # old key in grace, new key
            assert pub.wait(10)
            assert site.collector.wait_for(
                lambda r: {x["key_id"] for x in r if x["kind"] == "gps"} == {15, 0}, 10), (
                gw.snapshot, site.collector.snapshot())
    finally:
        devc.disconnect()
        devc.loop_stop()


def test_a_burst_of_one_device_far_beyond_the_replay_window_is_all_accepted(
        tmp_path: Path) -> None:
    """3,000 records of one device published back to back arrive in whole socket
    reads; not one may be refused as replayed."""
    s = Site(tmp_path)
    try:
        dev = s.device("rec001")
        msgs = [dev.gps() for _ in range(3000)]
        with RunningGateway(s.cfg) as gw:
            pub = s.publisher()
            pub.publish_all(msgs)
            assert pub.wait(30)
            assert s.collector.wait_for(lambda r: len(set(device_ids(r))) == 3000, 30), (
                gw.snapshot)
            assert not [k for k in gw.snapshot if k.startswith("rejected:")], gw.snapshot
    finally:
        s.close()


def test_stop_with_a_full_feed_returns_and_acknowledges_everything_it_committed(
        tmp_path: Path) -> None:
    """SIGTERM's path (Gateway.stop) while the paho thread waits on a full feed:
    the committer must not wait for it forever, and what was committed must be
    acknowledged before the disconnect — the next run then sees no duplicate."""
    s = Site(tmp_path, ingest={"queue_max": 1, "batch_max": 1, "linger_ms": 20})
    try:
        dev = s.device("rec001")
        msgs = [dev.gps() for _ in range(5000)]
        gw = RunningGateway(s.cfg)
        first = gw.__enter__()
        pub = s.publisher()
        pub.publish_all(msgs)
        assert wait_until(lambda: first.inq.full_waits > 0, 10)
        first.stop()
        gw.thread.join(10)
        assert not gw.thread.is_alive(), "the gateway did not stop with a full feed"
        accepted_first = first.snapshot.get("accepted", 0)
        assert accepted_first > 0
        with RunningGateway(s.cfg) as second:
            assert pub.wait(30)
            assert s.collector.wait_for(lambda r: len(set(device_ids(r))) == 5000, 60), (
                second.snapshot)
        assert second.snapshot.get("duplicate", 0) == 0, second.snapshot
        assert second.snapshot["accepted"] == 5000       # counters are kept in the store
    finally:
        s.close()


def test_a_record_under_the_new_key_confirms_a_rotation_whose_ack_was_lost(site: Site) -> None:
    from gateway.commands import UNCONFIRMED_S, send_command
    from protocol.mac import Mac

    dev = site.device("rec002", key_id=0)
    new: dict[str, Any] = {}

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        v = verify(msg.topic, msg.payload, lambda d: DeviceKeys({0: dev.key}),
                   lambda d, ln: None, int(time.time()))
        new["key"] = message.unwrap_rotate_key(Mac(dev.key), "rec002", v.envelope)
        # the device installs the key but its ack never reaches the gateway

    devc = command_listener(site, "rec002", on_message)
    try:
        with RunningGateway(site.cfg):
            res = send_command(site.cfg, "rec002", "rotate_key", {}, 2, grace_s=3600)
            assert res.result is None and "key" in new
            old = [k for k in site.registry.get("rec002").keys if k.key_id == 0][0]
            assert old.valid_until > time.time() + UNCONFIRMED_S / 2     # unconfirmed
            rotated = Device("rec002", key=new["key"], key_id=1, epoch=1)
            rotated.seq = 100
            pub = site.publisher()
            pub.publish_all([rotated.gps()])
            assert pub.wait(10)
            deadline = time.time() + 10
            while time.time() < deadline:
                old = [k for k in site.registry.get("rec002").keys if k.key_id == 0][0]
                if old.valid_until is not None and old.valid_until < time.time() + 30 * 86400:
                    break
                time.sleep(0.05)
            assert old.valid_until is not None and old.valid_until < time.time() + 8 * 86400
    finally:
        devc.disconnect()
        devc.loop_stop()
