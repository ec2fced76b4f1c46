"""Broker-level security, in the style of mosquitto's own TLS and ACL suites:
a denied publish still gets a PUBACK, so every test checks what arrives."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway import brokerconf
from gateway.errors import GatewayError
from gateway.pki import Pki, PkiError
from simulators.mosquitto import Mosquitto, free_port

pytestmark = pytest.mark.broker
GW = "gw-test"


class Site:
    def __init__(self, root: Path) -> None:
        self.pki = Pki(root / "pki")
        self.pki.init(gateway_ids=(GW,))
        for cn in ("rec-a", "rec-b", "rec-rv"):
            self.pki.issue(cn)
        self.pki.revoke("rec-rv")
        self.pki.issue("rec-old", days=1,
                       not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
        self.rogue = Pki(root / "rogue-pki")
        self.rogue.init()
        self.rogue.issue("rec-a")
        self.port = free_port()
        settings = brokerconf.BrokerSettings(pki_dir=self.pki.dir, out_dir=root / "broker",
                                             tls_port=self.port, bind="127.0.0.1",
                                             gateway_ids=(GW,), persistence=False,
                                             run_as_root=True)
        brokerconf.write(settings)
        self.broker = Mosquitto(root / "broker", port=self.port, name="secure",
                                config=brokerconf.config_text(settings))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("site"))
    s.broker.start()
    yield s
    s.broker.stop()


class Peer:
    """A paho client that records what it receives."""

    def __init__(self, site: Site, cn: str, pki: Pki | None = None,
                 client_id: str | None = None, tls: bool = True) -> None:
        pki = pki or site.pki
        self.got: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.refused = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or cn)
        if tls:
            self.c.tls_set(ca_certs=str(site.pki.ca_cert_path), certfile=str(pki.cert_path(cn)),
                           keyfile=str(pki.key_path(cn)))
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, m: self.got.append((m.topic, m.payload))
        self.c.on_disconnect = lambda *a: self.refused.set()

    def _on_connect(self, _c, _u, _f, rc, _p) -> None:
        (self.refused if rc.is_failure else self.connected).set()

    def connect(self, port: int) -> bool:
        try:
            self.c.connect("127.0.0.1", port, keepalive=30)
        except (ssl.SSLError, OSError):
            return False
        self.c.loop_start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.connected.is_set():
                return True
            if self.refused.is_set():
                return False
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()

    def wait_for(self, topic: str, payload: bytes, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while (topic, payload) not in self.got:
            if time.monotonic() > deadline:
                raise AssertionError("%s %r never arrived; got %r" % (topic, payload, self.got))
            time.sleep(0.01)


def sub(peer: Peer, *topics: str) -> None:
    done = threading.Event()
    peer.c.on_subscribe = lambda *a: done.set()
    peer.c.subscribe([(t, 1) for t in topics])
    assert done.wait(5)


@pytest.fixture
def gateway(site: Site) -> Iterator[Peer]:
    p = Peer(site, GW)
    assert p.connect(site.port)
    sub(p, "ft/v1/#")
    yield p
    p.close()


def connect(site: Site, cn: str) -> Peer:
    p = Peer(site, cn)
    assert p.connect(site.port), cn + " could not connect"
    return p


def test_device_publishes_on_its_own_topics(site: Site, gateway: Peer) -> None:
    a = connect(site, "rec-a")
    a.c.publish("ft/v1/rec-a/gps", b"own", qos=1).wait_for_publish(5)
    gateway.wait_for("ft/v1/rec-a/gps", b"own")
    a.close()


def test_device_cannot_publish_on_another_devices_topics(site: Site, gateway: Peer) -> None:
    a = connect(site, "rec-a")
    for kind in ("gps", "hb", "alarm", "status", "ack"):
        a.c.publish("ft/v1/rec-b/" + kind, b"forged", qos=1).wait_for_publish(5)
    a.c.publish("ft/v1/rec-a/hb", b"marker", qos=1).wait_for_publish(5)
    gateway.wait_for("ft/v1/rec-a/hb", b"marker")
    assert [t for t, p in gateway.got if p == b"forged"] == []
    a.close()


def test_device_cannot_publish_as_the_gateway(site: Site, gateway: Peer) -> None:
    a = connect(site, "rec-a")
    b = connect(site, "rec-b")
    sub(b, "ft/v1/rec-b/cmd")
    a.c.publish("ft/v1/rec-b/cmd", b"fake-command", qos=1).wait_for_publish(5)
    a.c.publish("ft/v1/rec-a/cmd", b"fake-command", qos=1).wait_for_publish(5)
    gateway.c.publish("ft/v1/rec-b/cmd", b"real-command", qos=1).wait_for_publish(5)
    b.wait_for("ft/v1/rec-b/cmd", b"real-command")
    assert b"fake-command" not in [p for _t, p in b.got + gateway.got]
    a.close()
    b.close()


def test_device_cannot_read_another_devices_commands_or_everything(site: Site,
                                                                  gateway: Peer) -> None:
    a = connect(site, "rec-a")
    b = connect(site, "rec-b")
    sub(a, "ft/v1/rec-b/cmd", "#", "ft/v1/+/gps", "ft/v1/rec-a/cmd")
    b.c.publish("ft/v1/rec-b/gps", b"b-position", qos=1).wait_for_publish(5)
    gateway.c.publish("ft/v1/rec-b/cmd", b"for-b", qos=1).wait_for_publish(5)
    gateway.c.publish("ft/v1/rec-a/cmd", b"for-a", qos=1).wait_for_publish(5)
    a.wait_for("ft/v1/rec-a/cmd", b"for-a")
    gateway.wait_for("ft/v1/rec-b/gps", b"b-position")
    assert {t for t, _p in a.got} == {"ft/v1/rec-a/cmd"}
    a.close()
    b.close()


def test_client_id_is_forced_to_the_certificate_name(site: Site, gateway: Peer) -> None:
    a = Peer(site, "rec-a", client_id=GW)
    assert a.connect(site.port)
    a.c.publish("ft/v1/rec-a/gps", b"after-takeover-attempt", qos=1).wait_for_publish(5)
    gateway.wait_for("ft/v1/rec-a/gps", b"after-takeover-attempt")
    assert not gateway.refused.is_set()  # the gateway's session was not taken over
    a.close()


def test_revoked_certificate_is_refused(site: Site) -> None:
    assert not Peer(site, "rec-rv").connect(site.port)


def test_expired_certificate_is_refused(site: Site) -> None:
    assert not Peer(site, "rec-old").connect(site.port)


def test_certificate_from_another_ca_is_refused(site: Site) -> None:
    assert not Peer(site, "rec-a", pki=site.rogue).connect(site.port)


def test_plaintext_connection_is_refused(site: Site) -> None:
    assert not Peer(site, "rec-a", tls=False).connect(site.port)


@pytest.mark.parametrize("bad", ["rec+1", "rec#1", "a/b", "ab", "$SYS", "x" * 33])
def test_invalid_ids_never_get_certificates(site: Site, bad: str) -> None:
    with pytest.raises(PkiError):
        site.pki.issue(bad)


def test_second_valid_certificate_for_one_id_is_refused(site: Site) -> None:
    with pytest.raises(PkiError, match="revoke it first"):
        site.pki.issue("rec-a")


def test_broker_config_has_no_plaintext_listener_unless_asked(site: Site) -> None:
    s = brokerconf.BrokerSettings(pki_dir=site.pki.dir, out_dir=Path("/nonexistent"))
    text = brokerconf.config_text(s)
    assert text.count("listener ") == 1 and "require_certificate true" in text
    with_plain = brokerconf.config_text(
        brokerconf.BrokerSettings(pki_dir=site.pki.dir, out_dir=Path("/x"), plaintext_port=1883))
    assert "listener 1883 127.0.0.1" in with_plain


def test_broker_config_keeps_inflight_messages_within_the_replay_window(site: Site) -> None:
    s = brokerconf.BrokerSettings(pki_dir=site.pki.dir, out_dir=Path("/x"))
    assert "max_inflight_messages 100" in brokerconf.config_text(s)
    for bad in (0, 129):
        with pytest.raises(GatewayError, match="replay window"):
            brokerconf.config_text(brokerconf.BrokerSettings(
                pki_dir=site.pki.dir, out_dir=Path("/x"), max_inflight=bad))
