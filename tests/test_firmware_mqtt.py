"""The non-blocking MQTT client against an in-memory transport: exact bytes."""

import pytest

from firmware.app.mqtt import CONNECTED, IDLE, MqttClient
from tests.mqtt_packets import publish_packet


class Pipe:
    """A transport: what the client writes is kept, what we push is read."""

    def __init__(self, accept=1 << 20):
        self.out = bytearray()
        self.inq = bytearray()
        self.accept = accept
        self.open = True
        self.closed = False

    def ready(self):
        return self.open

    def write(self, mv):
        n = min(len(mv), self.accept)
        self.out += bytes(mv[:n])
        return n

    def readinto(self, mv):
        n = min(len(mv), len(self.inq))
        mv[:n] = self.inq[:n]
        del self.inq[:n]
        return n

    def close(self):
        self.closed = True


def connected(**kw):
    c = MqttClient("dev-1", keepalive_s=10, **kw)
    events = {"acks": [], "msgs": [], "closed": []}
    c.on_puback = events["acks"].append
    c.on_message = lambda t, p: events["msgs"].append((bytes(t), bytes(p)))
    c.on_closed = events["closed"].append
    pipe = Pipe()
    c.start(pipe, 0, b"ft/v1/dev-1/status", b"WILL")
    c.poll(0)
    pipe.inq += b"\x20\x02\x00\x00"
    c.poll(1)
    assert c.state == CONNECTED
    return c, pipe, events


def test_connect_packet_asks_a_persistent_session_keepalive_and_retained_will():
    c = MqttClient("dev-1", keepalive_s=60)
    pipe = Pipe()
    c.start(pipe, 0, b"w/t", b"bye")
    c.poll(0)
    assert bytes(pipe.out) == (b"\x10\x1b\x00\x04MQTT\x04\x2c\x00\x3c\x00\x05dev-1"
                               b"\x00\x03w/t\x00\x03bye")


def test_several_qos1_publishes_are_in_flight_at_once():
    c, pipe, ev = connected(max_inflight=4)
    pipe.out.clear()
    pids = [c.publish(b"t", b"abc", 3, tag=i) for i in range(5)]
    assert pids[:4] == [1, 2, 3, 4] and pids[4] == 0        # window full
    c.poll(2)
    assert bytes(pipe.out).count(b"\x32\x08\x00\x01t") == 4
    pipe.inq += b"\x40\x02\x00\x02\x40\x02\x00\x01"
    c.poll(3)
    assert ev["acks"] == [1, 0]


def test_partial_writes_are_resumed():
    c, pipe, _ = connected()
    pipe.accept = 3
    pipe.out.clear()
    c.publish(b"topic", b"payload", 7)
    for t in range(10):
        c.poll(10 + t)
    assert bytes(pipe.out) == b"\x32\x10\x00\x05topic\x00\x01payload"


def test_incoming_qos1_message_is_delivered_and_acked():
    c, pipe, ev = connected()
    pipe.out.clear()
    pipe.inq += b"\x32\x09\x00\x03cmd\x12\x34hi"
    c.poll(5)
    assert ev["msgs"] == [(b"cmd", b"hi")]
    assert bytes(pipe.out) == b"\x40\x02\x12\x34"


def test_packet_split_across_reads_is_reassembled():
    c, pipe, ev = connected()
    for b in b"\x30\x06\x00\x01xabc":
        pipe.inq.append(b)
        c.poll(5)
    assert ev["msgs"] == [(b"x", b"abc")]


def test_keepalive_sends_ping_and_drops_a_silent_broker():
    c, pipe, ev = connected()
    pipe.out.clear()
    c.poll(7600)
    assert bytes(pipe.out) == b"\xc0\x00"
    c.poll(15100)
    assert c.state == IDLE and ev["closed"] == ["keepalive timeout"] and pipe.closed


@pytest.mark.parametrize("junk", [b"\xff\x00", b"\x30\xff\xff\xff\xff\x01", b"\x90\x03\x00",
                                  b"\x34\x02\x00\x00", b"\x30\x80\x80\x01"])
def test_broker_garbage_closes_the_connection_with_a_reason(junk):
    c, pipe, ev = connected()
    pipe.inq += junk + b"\x00" * 600
    for t in range(5):
        c.poll(10 + t)
    assert c.state == IDLE and ev["closed"] and "garbage" in ev["closed"][0]


def test_refused_connack_closes():
    c = MqttClient("dev-1")
    closed = []
    c.on_closed = closed.append
    pipe = Pipe()
    c.start(pipe, 0)
    c.poll(0)
    pipe.inq += b"\x20\x02\x00\x05"
    c.poll(1)
    assert c.state == IDLE and "refused" in closed[0]


def test_connect_times_out_when_transport_never_opens():
    c = MqttClient("dev-1", io_timeout_s=2)
    closed = []
    c.on_closed = closed.append
    pipe = Pipe()
    pipe.open = False
    c.start(pipe, 0)
    c.poll(1000)
    assert c.state != IDLE
    c.poll(2500)
    assert closed == ["connect timeout"]


def test_oversize_publish_is_acked_and_dropped_not_redelivered_forever():
    c, pipe, ev = connected()
    pipe.out.clear()
    pipe.inq += publish_packet(b"ft/v1/dev-1/cert", b"x" * 3000, 7, qos=1)
    pipe.inq += publish_packet(b"ft/v1/dev-1/cmd", b"next", 8, qos=1)
    for t in range(1, 10):
        c.poll(t)
    assert c.state == CONNECTED and c.oversize == 1
    assert ev["msgs"] == [(b"ft/v1/dev-1/cmd", b"next")]
    assert b"\x40\x02\x00\x07" in bytes(pipe.out) and b"\x40\x02\x00\x08" in bytes(pipe.out)


def test_oversize_packet_of_another_type_closes_the_session():
    c, pipe, ev = connected()
    pipe.inq += b"\x90\x90\x10" + b"\x00" * 100       # a 2,064-byte SUBACK
    c.poll(1)
    assert c.state == IDLE and "packet of" in ev["closed"][0]


def test_publish_just_under_the_buffer_is_delivered_whole():
    c, pipe, ev = connected()
    payload = b"y" * 900
    pipe.inq += publish_packet(b"ft/v1/dev-1/cert", payload, 9, qos=1)
    c.poll(1)
    assert ev["msgs"] == [(b"ft/v1/dev-1/cert", payload)]
