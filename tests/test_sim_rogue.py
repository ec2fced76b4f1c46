"""The rogue client: what it makes (pure) and what reaches a real broker (all of it, logged)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from protocol.message import encode
from protocol.topics import KIND_GPS, topic_for
from protocol.verify import DeviceKeys, verify
from simulators.checker import AttackLog, sha256_hex
from simulators.rogue import (
    AttackFactory, Captured, OwnDevice, RogueClient, RogueConfig, check_loopback,
)

VICTIM_KEY = bytes(range(32))
OWN = OwnDevice("rec-0666", bytes(range(100, 132)), 0)
NOW = 1_780_000_000.0


def legit(n: int = 4, device: str = "rec-0001") -> list[Captured]:
    from protocol.auth import Signer

    s = Signer(device, VICTIM_KEY, 0)
    body = {"lat_e7": 359900000, "lon_e7": 1194000000, "alt_m": 90, "speed_cms": 130,
            "course_cdeg": 9000, "hdop_x10": 9, "fix": 2, "sats": 9, "gnss": 9, "age_s": 0}
    return [Captured(topic_for(device, KIND_GPS), encode(s, KIND_GPS, 1, i, int(NOW), body))
            for i in range(1, n + 1)]


def factory(seed: int = 1) -> AttackFactory:
    return AttackFactory(seed, legit(), ["rec-0001", "wb-0001"], OWN, big_payload=1000)


def verdict(topic: str, payload: bytes, device_keys: dict[str, bytes]) -> Any:
    keys = {d: DeviceKeys({0: k}) for d, k in device_keys.items()}
    return verify(topic, payload, keys.get, lambda d, lane: None, int(NOW))


def test_attacks_are_reproducible_from_the_seed() -> None:
    a = [x.payload for x in factory(3).forged(5, NOW)]
    b = [x.payload for x in factory(3).forged(5, NOW)]
    c = [x.payload for x in factory(4).forged(5, NOW)]
    assert a == b != c


def test_forged_messages_are_well_formed_but_fail_the_signature() -> None:
    for a in factory().forged(6, NOW):
        if a.topic.startswith("ft/v1/rec-0001/"):
            v = verdict(a.topic, a.payload, {"rec-0001": VICTIM_KEY})
            assert v.reason in ("bad_signature", "key_unknown")


def test_replays_are_exact_copies_of_legit_messages() -> None:
    got = list(factory().replayed(3))
    assert {(a.topic, a.payload) for a in got} <= {(c.topic, c.payload) for c in legit()}
    assert all(a.legit_copy for a in got)


def test_retopiced_messages_carry_legit_bytes_on_other_topics() -> None:
    payloads = {c.payload: c.topic for c in legit()}
    for a in factory().retopiced(4):
        assert a.payload in payloads and a.topic != payloads[a.payload]
        v = verdict(a.topic, a.payload, {"rec-0001": VICTIM_KEY, "wb-0001": VICTIM_KEY})
        assert not v.ok


def test_tampered_messages_differ_from_legit_by_bit_flips_and_fail() -> None:
    originals = [c.payload for c in legit()]
    for a in factory().tampered(8):
        assert a.payload not in originals
        assert any(len(o) == len(a.payload) and sum(x != y for x, y in zip(o, a.payload,
                                                                            strict=True)) == 1
                   for o in originals)
        assert not verdict(a.topic, a.payload, {"rec-0001": VICTIM_KEY}).ok


def test_malformed_covers_truncated_random_oversize_and_bad_topics() -> None:
    got = list(factory().malformed(NOW))
    notes = " ".join(a.note for a in got)
    assert "truncated to 0" in notes and "random 200 bytes" in notes and "1000 bytes" in notes
    assert {"ft/v1/a+b/gps", "ft/v1/x/gps", "ft/v1/rec-0001/cmd"} <= {a.topic for a in got}
    assert all(a.raw == ("+" in a.topic or "#" in a.topic) for a in got)


def test_impersonation_is_validly_signed_by_its_own_key_but_not_the_victims() -> None:
    got = list(factory().impersonation(2, NOW))
    assert len(got) == 2
    for a in got:
        assert a.topic.startswith("ft/v1/rec-0001/") or a.topic.startswith("ft/v1/wb-0001/")
        victim = a.topic.split("/")[2]
        assert verdict(a.topic, a.payload, {victim: VICTIM_KEY}).reason == "bad_signature"
    own_topic = topic_for(OWN.device_id, KIND_GPS)
    assert verdict(own_topic, got[0].payload, {OWN.device_id: OWN.key}).ok


def test_the_rogue_refuses_a_broker_off_this_machine() -> None:
    with pytest.raises(ValueError, match="only attacks loopback"):
        check_loopback("192.0.2.1")
    with pytest.raises(ValueError, match="loopback"):
        RogueConfig(host="198.51.100.7")


def test_flood_and_counts_are_bounded() -> None:
    with pytest.raises(ValueError, match="flood_count"):
        RogueConfig(flood_count=10**9)
    with pytest.raises(ValueError, match="flood_rate"):
        RogueConfig(flood_rate=10**6)


class _Sink:
    """Everything published on the broker under ft/#."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sink-%d"
                             % time.monotonic_ns())
        self.c.on_connect = lambda cl, ud, fl, rc, pr=None: cl.subscribe("ft/#", qos=1)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        assert ready.wait(10)

    def _on_message(self, cl: Any, ud: Any, msg: Any) -> None:
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def wait_for(self, n: int, timeout: float = 15) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.got) >= n:
                    break
            time.sleep(0.02)
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.broker
def test_every_attack_reaches_the_broker_and_is_logged(fresh_broker: Any) -> None:
    broker = fresh_broker
    sink = _Sink(broker.port)
    log = AttackLog()
    cfg = RogueConfig(port=broker.port, client_id="rogue-%d" % time.monotonic_ns(),
                      per_kind=3, flood_count=40, flood_rate=1000)
    try:
        with RogueClient(cfg, log) as rogue:
            res = rogue.run(AttackFactory(5, legit(), ["rec-0001", "wb-0001"], OWN))
        entries = log.snapshot()
        deliverable = [e for e in entries if "+" not in e.topic and "#" not in e.topic]
        got = sink.wait_for(len(deliverable))
    finally:
        sink.close()
    assert res.publish_failed == 0 and res.published == len(deliverable)
    assert Counter((t, sha256_hex(p)) for t, p in got) == Counter(
        (e.topic, e.sha256) for e in deliverable)
    assert set(res.logged) == {"forged", "replayed", "retopiced", "tampered", "malformed",
                               "impersonation", "flood"}
    assert any(e.size == 1024 * 1024 for e in entries)


@pytest.mark.broker
def test_wildcard_topics_are_logged_and_refused_by_the_broker(broker: Any) -> None:
    sink = _Sink(broker.port)
    log = AttackLog()
    cfg = RogueConfig(port=broker.port, client_id="rogue-w%d" % time.monotonic_ns(),
                      big_payload=0)
    try:
        with RogueClient(cfg, log) as rogue:
            res = rogue.run(AttackFactory(5, legit()), kinds=["malformed"])
        got = sink.wait_for(res.published)
        time.sleep(0.2)
    finally:
        sink.close()
    assert res.raw_refused == 3 and res.raw_sent == 0
    assert sum(1 for e in log.snapshot() if "+" in e.topic or "#" in e.topic) == 3
    assert not any("+" in t or "#" in t for t, _ in got)


@pytest.mark.broker
def test_the_flood_keeps_to_its_rate(broker: Any) -> None:
    cfg = RogueConfig(port=broker.port, client_id="rogue-f%d" % time.monotonic_ns(),
                      flood_count=30, flood_rate=100)
    log = AttackLog()
    with RogueClient(cfg, log) as rogue:
        t0 = time.monotonic()
        res = rogue.run(AttackFactory(1, legit()), kinds=["flood"])
        took = time.monotonic() - t0
    assert res.logged["flood"] == 30 and res.published == 30
    assert took >= 0.28


@pytest.mark.broker
def test_sniffing_captures_legit_device_messages(fresh_broker: Any) -> None:
    broker = fresh_broker
    cfg = RogueConfig(port=broker.port, client_id="rogue-s%d" % time.monotonic_ns())
    msgs = legit(3, "rec-0042")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-%d" % time.monotonic_ns())
    pub.connect("127.0.0.1", broker.port, 30)
    pub.loop_start()

    subscribed = threading.Event()

    def publish_soon() -> None:
        assert subscribed.wait(10)
        for m in msgs:
            pub.publish(m.topic, m.payload, qos=1).wait_for_publish(5)

    t = threading.Thread(target=publish_soon)
    with RogueClient(cfg, AttackLog()) as rogue:
        t.start()
        got = rogue.sniff(10, limit=3, subscribed=subscribed)
    t.join(5)
    pub.disconnect()
    pub.loop_stop()
    assert got == msgs


def test_legit_payloads_on_bad_topics_are_logged_as_copies() -> None:
    payloads = {c.payload for c in legit()}
    for a in factory().malformed(NOW):
        assert a.legit_copy == (a.payload in payloads)
