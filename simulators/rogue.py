"""The rogue client: publishes what an attacker on the local network would.

Attacks (``ATTACK_KINDS`` in ``simulators.checker``):

* ``forged`` — well-formed envelopes for a real device's topic, signed with a
  random key (a random tag as far as the gateway can tell);
* ``replayed`` — byte-exact copies of legitimate messages seen on the broker,
  on their own topic;
* ``retopiced`` — a legitimate payload on another device's topic, or on
  another kind's topic of the same device;
* ``tampered`` — legitimate payloads with bits flipped in the header, the
  body, the flags or the tag;
* ``malformed`` — truncated payloads, random bytes, a 1 MB payload, and
  topics the gateway must refuse (bad ids, extra levels, unknown kinds, the
  downlink ``cmd`` topic, and wildcard topics like ``ft/v1/a+b/gps`` that are
  sent over a raw socket because no MQTT client library will publish them);
* ``flood`` — a bounded number of forged messages at a bounded rate;
* ``impersonation`` — a device with a valid key of its own signing a record
  and publishing it under another device's id.

Every payload is written to the attack log *before* it is published, so the
checker can prove none of them was forwarded. Everything is bounded (counts,
rates, timeouts) and only loopback brokers are accepted.

Library: ``AttackFactory`` (pure: legit samples in, attacks out) and
``RogueClient`` (paho shell). CLI: ``python -m simulators rogue``.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.auth import Signer
from protocol.codec import CLASS_RECORDER, HEADER_LEN, decode_header
from protocol.errors import ProtocolError
from protocol.message import encode, sample_heartbeat
from protocol.topics import KIND_ALARM, KIND_BY_NAME, KIND_GPS, KIND_HB, parse_topic, topic_for
from simulators.checker import AttackLog

MAX_FLOOD = 100_000
MAX_FLOOD_RATE = 5_000.0
BIG_PAYLOAD = 1024 * 1024
LEGIT_TOPIC_FILTER = "ft/v1/+/+"
MAX_SNIFFED = 1000


class RogueError(RuntimeError):
    pass


@dataclass(frozen=True)
class Captured:
    """A legitimate message seen on the broker."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class Attack:
    kind: str
    topic: str
    payload: bytes
    legit_copy: bool = False
    raw: bool = False          # needs a raw socket: the topic is not a valid MQTT topic name
    note: str = ""


@dataclass(frozen=True)
class OwnDevice:
    """The rogue's own enrolled device: a valid key, but only for its own id."""

    device_id: str
    key: bytes
    key_id: int = 0

    def __post_init__(self) -> None:
        Signer(self.device_id, self.key, self.key_id)   # validates id, key and key id

    def signer(self, as_device: str | None = None) -> Signer:
        return Signer(as_device or self.device_id, self.key, self.key_id)


@dataclass(frozen=True)
class RogueConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "rogue"
    seed: int = 0
    per_kind: int = 4
    flood_count: int = 200
    flood_rate: float = 500.0
    big_payload: int = BIG_PAYLOAD
    publish_timeout_s: float = 5.0
    connect_timeout_s: float = 10.0
    tls: dict[str, str] | None = None

    def __post_init__(self) -> None:
        check_loopback(self.host)
        if not 0 < self.port < 65536:
            raise ValueError("port must be 1..65535, got %r" % self.port)
        if not 0 <= self.per_kind <= 1000:
            raise ValueError("per_kind must be 0..1000, got %r" % self.per_kind)
        if not 0 <= self.flood_count <= MAX_FLOOD:
            raise ValueError("flood_count must be 0..%d, got %r" % (MAX_FLOOD, self.flood_count))
        if not 0 < self.flood_rate <= MAX_FLOOD_RATE:
            raise ValueError("flood_rate must be in (0, %g] messages/s" % MAX_FLOOD_RATE)
        if not 0 <= self.big_payload <= 16 * 1024 * 1024:
            raise ValueError("big_payload must be 0..16 MiB")
        if not 0 < self.publish_timeout_s <= 120 or not 0 < self.connect_timeout_s <= 120:
            raise ValueError("timeouts must be in (0, 120] s")


def check_loopback(host: str) -> str:
    """Refuse any broker that is not on this machine."""
    try:
        addr = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        raise ValueError("cannot resolve broker host %r" % host) from None
    if not addr.is_loopback:
        raise ValueError("the rogue client only attacks loopback brokers, not %s (%s)"
                         % (host, addr))
    return host


# ---- the pure part ----------------------------------------------------------

class AttackFactory:
    """Makes attack messages from legitimate samples; deterministic from ``seed``.

    ``targets`` are device ids to aim forged messages at (defaults to the
    devices in ``legit``). ``own`` is the rogue's own signer (a device with a
    valid key of its own) for impersonation.
    """

    def __init__(self, seed: int, legit: Sequence[Captured] = (),
                 targets: Sequence[str] = (), own: OwnDevice | None = None,
                 big_payload: int = BIG_PAYLOAD) -> None:
        self.rng = random.Random("rogue:%d" % seed)
        self.legit = [c for c in legit if _parse(c.topic) is not None]
        seen = [p[0] for p in (_parse(c.topic) for c in self.legit) if p is not None]
        devs = list(dict.fromkeys(list(targets) + seen))
        self.targets = devs or ["rec-0001"]
        self.own = own
        self.big_payload = big_payload

    def _forged_payload(self, device: str, kind: int, now: float) -> bytes:
        key = bytes(self.rng.randrange(256) for _ in range(32))
        signer = Signer(device, key, self.rng.randrange(16))
        return encode(signer, kind, self.rng.randrange(1, 1 << 20),
                      self.rng.randrange(1, 1 << 24), int(now), _body(kind, self.rng))

    def forged(self, n: int, now: float) -> Iterator[Attack]:
        for i in range(n):
            dev = self.targets[i % len(self.targets)]
            kind = (KIND_GPS, KIND_ALARM, KIND_HB)[i % 3]
            yield Attack("forged", topic_for(dev, kind), self._forged_payload(dev, kind, now),
                         note="random key")

    def replayed(self, n: int) -> Iterator[Attack]:
        for i in range(min(n, len(self.legit))):
            c = self.legit[-1 - i]
            yield Attack("replayed", c.topic, c.payload, legit_copy=True, note="exact copy")

    def retopiced(self, n: int) -> Iterator[Attack]:
        for i in range(min(n, len(self.legit))):
            c = self.legit[i]
            dev, kind = _parse(c.topic) or ("", 0)
            others = [d for d in self.targets if d != dev]
            if i % 2 == 0 and others:
                victim = others[i % len(others)]
                yield Attack("retopiced", topic_for(victim, kind), c.payload,
                             note="to %s" % victim)
            else:
                other_kind = KIND_HB if kind != KIND_HB else KIND_GPS
                yield Attack("retopiced", topic_for(dev, other_kind), c.payload, legit_copy=True,
                             note="to kind %d" % other_kind)

    def tampered(self, n: int) -> Iterator[Attack]:
        if not self.legit:
            return
        regions = ("seq", "flags", "body", "tag")
        for i in range(n):
            c = self.legit[i % len(self.legit)]
            b = bytearray(c.payload)
            region = regions[i % len(regions)]
            if region == "seq":
                pos = 6 + 3            # low byte of the sequence number: a fresh seq
            elif region == "flags":
                pos = 1
            elif region == "tag":
                pos = len(b) - 1 - self.rng.randrange(16)
            else:
                pos = HEADER_LEN + self.rng.randrange(max(1, len(b) - HEADER_LEN - 16))
            if pos >= len(b):
                continue
            b[pos] ^= 1 << self.rng.randrange(8) if region != "flags" else 0x10
            yield Attack("tampered", c.topic, bytes(b), note="bit flip in %s" % region)

    def malformed(self, now: float) -> Iterator[Attack]:
        dev = self.targets[0]
        gps = topic_for(dev, KIND_GPS)
        base = self.legit[0].payload if self.legit else self._forged_payload(dev, KIND_GPS, now)
        base_topic = self.legit[0].topic if self.legit else gps
        for k in (0, 1, HEADER_LEN - 1, HEADER_LEN + 3, len(base) - 1):
            yield Attack("malformed", base_topic, base[:k], note="truncated to %d" % k)
        for size in (1, 31, 64, 200):
            yield Attack("malformed", gps, bytes(self.rng.randrange(256) for _ in range(size)),
                         note="random %d bytes" % size)
        if self.big_payload:
            yield Attack("malformed", gps, self.rng.randbytes(self.big_payload),
                         note="%d bytes" % self.big_payload)
        # a legitimate payload on a topic that must be refused is a copy of a legit message
        copy = bool(self.legit)
        for topic in ("ft/v1/x/gps", "ft/v1/%s/nope" % dev, "ft/v1/%s/gps/extra" % dev,
                      "ft/v1//gps", "ft/v1/%s/gps" % ("A" * 40), "ft/v2/%s/gps" % dev,
                      "ft/v1/%s/cmd" % dev, "ft/v1/$%s/gps" % dev, "ft/v1/%s /gps" % dev):
            yield Attack("malformed", topic, base, legit_copy=copy, note="bad topic")
        for topic in ("ft/v1/a+b/gps", "ft/v1/+/gps", "ft/v1/%s/#" % dev):
            yield Attack("malformed", topic, base, legit_copy=copy, raw=True,
                         note="wildcard topic, raw socket")

    def flood(self, n: int, now: float) -> Iterator[Attack]:
        for i in range(n):
            dev = self.targets[i % len(self.targets)]
            yield Attack("flood", topic_for(dev, KIND_GPS), self._forged_payload(dev, KIND_GPS,
                                                                                 now),
                         note="flood %d/%d" % (i + 1, n))

    def impersonation(self, n: int, now: float) -> Iterator[Attack]:
        own = self.own
        if own is None:
            return
        victims = [d for d in self.targets if d != own.device_id] or ["rec-0001"]
        for i in range(n):
            victim = victims[i % len(victims)]
            kind = (KIND_GPS, KIND_ALARM)[i % 2]
            epoch = self.rng.randrange(1, 1 << 20)
            seq = self.rng.randrange(1, 1 << 24)
            if i % 2 == 0:
                payload = encode(own.signer(), kind, epoch, seq, int(now),
                                 _body(kind, self.rng))
                note = "signed by %s as itself" % own.device_id
            else:
                # its own key, but MAC'd as the victim's id: still not the victim's key
                payload = encode(own.signer(victim), kind, epoch, seq, int(now),
                                 _body(kind, self.rng))
                note = "%s's key, MAC'd as %s" % (own.device_id, victim)
            yield Attack("impersonation", topic_for(victim, kind), payload, note=note)


def _parse(topic: str) -> tuple[str, int] | None:
    try:
        return parse_topic(topic)
    except ProtocolError:
        return None


def _position(rng: random.Random) -> dict[str, Any]:
    return {"lat_e7": int((35.99 + rng.uniform(-0.02, 0.02)) * 1e7),
            "lon_e7": int((119.40 + rng.uniform(-0.02, 0.02)) * 1e7),
            "alt_m": 90, "speed_cms": rng.randrange(0, 1500), "course_cdeg": rng.randrange(36000),
            "hdop_x10": rng.randrange(6, 40), "fix": 2, "sats": rng.randrange(4, 20),
            "gnss": 9, "age_s": 0}


def _body(kind: int, rng: random.Random) -> dict[str, Any]:
    if kind == KIND_GPS:
        return _position(rng)
    if kind == KIND_ALARM:
        b = _position(rng)
        b.update({"alarm": "sos", "value": 0, "has_position": True})
        return b
    return sample_heartbeat(CLASS_RECORDER)


# ---- the MQTT shell ---------------------------------------------------------

@dataclass
class RogueResult:
    logged: Counter[str] = field(default_factory=Counter)
    published: int = 0
    publish_failed: int = 0
    raw_sent: int = 0
    raw_refused: int = 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8_field(s: bytes) -> bytes:
    return struct.pack(">H", len(s)) + s


def raw_publish(host: str, port: int, topic: bytes, payload: bytes, client_id: str,
                timeout_s: float = 5.0) -> bool:
    """CONNECT + PUBLISH (QoS 0) + DISCONNECT on a raw socket; True if the broker
    accepted the connection and did not close it on the PUBLISH within ``timeout_s``.

    For topics no client library will send (wildcards in a topic name).
    """
    check_loopback(host)
    var = _utf8_field(b"MQTT") + bytes((4, 0x02)) + struct.pack(">H", 30)
    body = var + _utf8_field(client_id.encode())
    connect = bytes((0x10,)) + _varint(len(body)) + body
    pub_body = _utf8_field(topic) + payload
    publish = bytes((0x30,)) + _varint(len(pub_body)) + pub_body
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.settimeout(timeout_s)
        s.sendall(connect)
        connack = s.recv(4)
        if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
            return False
        try:
            s.sendall(publish)
            # a PINGREQ: a broker that dropped us for the PUBLISH will not answer
            s.sendall(b"\xc0\x00")
            resp = s.recv(2)
            ok = resp == b"\xd0\x00"
            s.sendall(b"\xe0\x00")
        except OSError:
            return False
        return ok


class RogueClient:
    """Publishes attacks with paho (QoS 1, waits for each PUBACK with a timeout)."""

    def __init__(self, config: RogueConfig, log: AttackLog) -> None:
        self.config = config
        self.log = log
        self.result = RogueResult()
        self._client: Any = None
        self._connected = threading.Event()

    def _new_client(self, client_id: str) -> Any:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        clean_session=True, protocol=mqtt.MQTTv311)
        c.connect_timeout = self.config.connect_timeout_s
        c.max_queued_messages_set(1000)
        if self.config.tls:
            c.tls_set(ca_certs=self.config.tls.get("cafile"),
                      certfile=self.config.tls.get("certfile"),
                      keyfile=self.config.tls.get("keyfile"))
        return c

    def start(self) -> RogueClient:
        cfg = self.config
        c = self._new_client(cfg.client_id)
        c.on_connect = lambda cl, ud, fl, rc, pr=None: (
            self._connected.set() if not rc.is_failure else None)
        self._client = c
        try:
            c.connect(cfg.host, cfg.port, 30)
        except OSError as e:
            raise RogueError("cannot connect to %s:%d: %s" % (cfg.host, cfg.port, e)) from None
        c.loop_start()
        if not self._connected.wait(cfg.connect_timeout_s):
            self.stop()
            raise RogueError("no CONNACK from %s:%d within %.0f s"
                             % (cfg.host, cfg.port, cfg.connect_timeout_s))
        return self

    def stop(self) -> None:
        c = self._client
        if c is not None:
            self._client = None
            c.disconnect()
            c.loop_stop()

    def sniff(self, seconds: float, limit: int = 200,
              subscribed: threading.Event | None = None) -> list[Captured]:
        """Legitimate device messages seen on the broker for ``seconds`` (bounded).

        ``subscribed`` is set once the broker acknowledged the subscription.
        """
        if not 0 < seconds <= 600:
            raise ValueError("sniff seconds must be in (0, 600]")
        limit = max(1, min(limit, MAX_SNIFFED))
        got: list[Captured] = []
        done = threading.Event()
        lock = threading.Lock()
        c = self._new_client(self.config.client_id + "-sniff")

        def on_message(cl: Any, ud: Any, msg: Any) -> None:
            if msg.topic.endswith("/cmd") or _parse(msg.topic) is None:
                return
            with lock:
                if len(got) < limit:
                    got.append(Captured(msg.topic, bytes(msg.payload)))
                if len(got) >= limit:
                    done.set()

        c.on_message = on_message
        c.on_connect = lambda cl, ud, fl, rc, pr=None: cl.subscribe(LEGIT_TOPIC_FILTER, qos=0)
        if subscribed is not None:
            c.on_subscribe = lambda *args: subscribed.set()
        try:
            c.connect(self.config.host, self.config.port, 30)
        except OSError as e:
            raise RogueError("cannot connect to sniff: %s" % e) from None
        c.loop_start()
        done.wait(seconds)
        c.disconnect()
        c.loop_stop()
        with lock:
            return _only_decodable(got)

    def send(self, attack: Attack) -> bool:
        """Log, then publish one attack; True if the broker took it."""
        cfg = self.config
        self.log.record(attack.kind, attack.topic, attack.payload, time.time(),
                        attack.legit_copy, attack.note)
        self.result.logged[attack.kind] += 1
        if attack.raw:
            try:
                ok = raw_publish(cfg.host, cfg.port, attack.topic.encode(), attack.payload,
                                 cfg.client_id + "-raw", cfg.publish_timeout_s)
            except OSError:
                ok = False
            if ok:
                self.result.raw_sent += 1
            else:
                self.result.raw_refused += 1
            return ok
        if self._client is None:
            raise RogueError("not started")
        info = self._client.publish(attack.topic, attack.payload, qos=1)
        try:
            info.wait_for_publish(cfg.publish_timeout_s)
        except (RuntimeError, ValueError):
            pass
        if info.is_published():
            self.result.published += 1
            return True
        self.result.publish_failed += 1
        return False

    def run(self, factory: AttackFactory, kinds: Sequence[str] | None = None,
            stop: threading.Event | None = None) -> RogueResult:
        """Every attack kind in turn (or only ``kinds``), the flood rate-limited."""
        cfg = self.config
        stop = stop or threading.Event()
        now = time.time()
        plan: list[tuple[str, Iterator[Attack]]] = [
            ("forged", factory.forged(cfg.per_kind, now)),
            ("replayed", factory.replayed(cfg.per_kind)),
            ("retopiced", factory.retopiced(cfg.per_kind)),
            ("tampered", factory.tampered(cfg.per_kind)),
            ("malformed", factory.malformed(now)),
            ("impersonation", factory.impersonation(cfg.per_kind, now)),
            ("flood", factory.flood(cfg.flood_count, now)),
        ]
        for kind, attacks in plan:
            if kinds is not None and kind not in kinds:
                continue
            interval = 1.0 / cfg.flood_rate if kind == "flood" else 0.0
            next_at = time.monotonic()
            for a in attacks:
                if stop.is_set():
                    return self.result
                if interval:
                    delay = next_at - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        return self.result
                    next_at += interval
                self.send(a)
        self.log.flush()
        return self.result

    def __enter__(self) -> RogueClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _only_decodable(msgs: list[Captured]) -> list[Captured]:
    """Keep messages that look like v1 envelopes on a topic of their kind."""
    out = []
    for m in msgs:
        p = _parse(m.topic)
        try:
            env = decode_header(m.payload)
        except ProtocolError:
            continue
        if p is not None and env.kind == p[1]:
            out.append(m)
    return out


KIND_NAMES = tuple(KIND_BY_NAME)
