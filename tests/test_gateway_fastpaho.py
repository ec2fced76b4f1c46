"""The gateway's fast MQTT read path: whole PUBLISH packets are split out of
the read buffer by a pure function; paho reads everything else."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from gateway.fastpaho import FastClient, Publish, split_publishes
from gateway.pki import Pki
from simulators.mosquitto import Mosquitto, free_port
from tests.mqtt_packets import publish_packet


publishes = st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=300),
                               st.integers(1, 65535), st.sampled_from([0, 1])),
                     max_size=30)


def expected(p: tuple[bytes, bytes, int, int]) -> Publish:
    topic, payload, mid, qos = p
    return (topic, payload, mid if qos else 0, qos)


@given(publishes)
def test_every_whole_publish_in_the_buffer_is_split_out_in_order(ps: list) -> None:
    buf = b"".join(publish_packet(*p) for p in ps)
    out, pos = split_publishes(buf, 0, 10_000)
    assert out == [expected(p) for p in ps]
    assert pos == len(buf)


@given(publishes, st.data())
def test_a_packet_cut_by_the_end_of_the_buffer_is_left_for_the_next_read(
        ps: list, data: st.DataObject) -> None:
    packets = [publish_packet(*p) for p in ps]
    buf = b"".join(packets)
    cut = data.draw(st.integers(0, len(buf)))
    out, pos = split_publishes(buf[:cut], 0, 10_000)
    whole, end = 0, 0
    while whole < len(packets) and end + len(packets[whole]) <= cut:
        end += len(packets[whole])
        whole += 1
    assert out == [expected(p) for p in ps[:whole]]
    assert pos == end


def test_splitting_stops_at_a_packet_that_is_not_a_qos_0_or_1_publish() -> None:
    first = publish_packet(b"ft/v1/dev-1/gps", b"x", 7, 1)
    for other in (b"\xd0\x00",                                         # PINGRESP
                  publish_packet(b"ft/v1/dev-1/gps", b"y", 8, 2),      # QoS 2
                  b"\x90\x03\x00\x01\x01"):                            # SUBACK
        out, pos = split_publishes(first + other + first, 0, 100)
        assert out == [(b"ft/v1/dev-1/gps", b"x", 7, 1)]
        assert pos == len(first)


def test_malformed_packets_are_left_to_paho_to_report() -> None:
    too_long_length = b"\x32\xff\xff\xff\xff\x7f" + b"\x00" * 10
    topic_past_end = b"\x32\x04\x00\x09ab"          # topic length 9 in a 4-byte packet
    no_packet_id = b"\x32\x03\x00\x01a"             # QoS 1 without its message id
    empty_topic = b"\x32\x04\x00\x00\x00\x01"      # a topic is at least one character
    for bad in (too_long_length, topic_past_end, no_packet_id, empty_topic):
        assert split_publishes(bad, 0, 100) == ([], 0)


def test_splitting_starts_at_the_offset_and_honours_the_limit() -> None:
    packets = [publish_packet(b"t", b"%d" % i, i + 1, 1) for i in range(5)]
    buf = b"junk" + b"".join(packets)
    out, pos = split_publishes(buf, 4, 3)
    assert [p[1] for p in out] == [b"0", b"1", b"2"]
    assert pos == 4 + sum(len(p) for p in packets[:3])


@given(st.binary(max_size=300), st.integers(0, 10))
def test_any_bytes_split_without_raising_and_consume_only_whole_packets(buf: bytes,
                                                                         start: int) -> None:
    start = min(start, len(buf))
    out, pos = split_publishes(buf, start, 1000)
    assert start <= pos <= len(buf)
    assert sum(len(publish_packet(*p)) for p in out) == pos - start


def start_broker(tmp_path: Path, tls: bool) -> tuple[Mosquitto, str | None]:
    """A mosquitto, plaintext or with a server certificate (then: the CA's path)."""
    if not tls:
        return Mosquitto(tmp_path / "b").start(), None
    pki = Pki(tmp_path / "pki")
    pki.init()
    port = free_port()
    conf = "\n".join([
        "user root" if os.geteuid() == 0 else "",
        "listener %d 127.0.0.1" % port,
        "cafile %s" % pki.ca_cert_path,
        "certfile %s" % (pki.dir / "broker.crt"),
        "keyfile %s" % (pki.dir / "broker.key"),
        "allow_anonymous true",
        "max_inflight_messages 100",
        "max_queued_messages 100000",
    ]) + "\n"
    return Mosquitto(tmp_path / "b", port=port, config=conf).start(), str(pki.ca_cert_path)


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_fast_client_receives_every_message_of_a_real_broker_in_order(tmp_path: Path,
                                                                      tls: bool) -> None:
    """Small and large (paho's path) messages, QoS 0 and 1, all arrive once, in
    order per QoS, and acknowledged ones are not redelivered on the next session.
    Over TLS too, where the socket hands out one TLS record (one packet) per read."""
    broker, ca = start_broker(tmp_path, tls)
    got: list[Publish] = []
    done = threading.Event()
    total = 3003
    via_batch = [0]

    def on_batch(batch: list[Publish]) -> None:
        via_batch[0] += len(batch)
        got.extend(batch)
        c.ack_many([mid for _t, _p, mid, qos in batch if qos])
        if len(got) >= total:
            done.set()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        got.append((msg._topic, msg.payload, msg.mid, msg.qos))
        if msg.qos:
            client.ack(msg.mid, 1)
        if len(got) >= total:
            done.set()

    def client() -> FastClient:
        cl = FastClient(CallbackAPIVersion.VERSION2, client_id="fast-reader",
                        clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
        if ca:
            cl.tls_set(ca_certs=ca)
        cl.on_message = on_message
        cl.on_message_batch = on_batch
        cl.connect("127.0.0.1", broker.port)
        cl.subscribe("fast/#", 1)
        cl.loop_start()
        return cl

    try:
        c = client()
        time.sleep(0.3)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fast-writer")
        if ca:
            pub.tls_set(ca_certs=ca)
        pub.max_inflight_messages_set(500)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        sent = []
        for i in range(total):
            size = 200_000 if i in (5, 1500, 3000) else 40 + i % 90
            payload = (b"%06d" % i).ljust(size, b".")
            qos = 0 if i % 50 == 49 else 1
            sent.append((b"fast/%d" % (i % 7), payload, qos))
            pub.publish("fast/%d" % (i % 7), payload, qos)
        assert done.wait(60), "received %d of %d" % (len(got), total)
        received = [(t, p, q) for t, p, _m, q in got]
        for qos in (0, 1):       # the broker keeps order per QoS; QoS 0 may overtake
            assert [m for m in received if m[2] == qos] == [m for m in sent if m[2] == qos]
        assert len(received) == len(sent)
        assert via_batch[0] > total // 2      # the fast path carried the stream
        pub.loop_stop()
        pub.disconnect()
        c.disconnect()
        c.loop_stop()
        got.clear()
        c = client()
        time.sleep(1.0)
        assert got == []          # every QoS 1 message was acknowledged once
        c.disconnect()
        c.loop_stop()
    finally:
        broker.stop()


def test_one_loop_read_takes_a_bounded_number_of_packets_so_acks_and_pings_get_written() -> None:
    """A flood of small packets must not keep the loop thread reading forever."""
    import socket

    from gateway.fastpaho import MAX_PACKETS_PER_READ, BufferedSocket

    ours, theirs = socket.socketpair()
    try:
        packet = publish_packet(b"ft/v1/rec001/gps", b"x" * 40, 0, 0)
        flood = 3 * MAX_PACKETS_PER_READ
        writer = threading.Thread(target=theirs.sendall, args=(packet * flood,), daemon=True)
        writer.start()
        ours.setblocking(False)
        c = FastClient(CallbackAPIVersion.VERSION2, client_id="budget", protocol=mqtt.MQTTv311)
        seen: list[int] = []
        c.on_message_batch = lambda batch: seen.append(len(batch))
        c.on_message = lambda client, userdata, msg: seen.append(1)   # paho's path
        c._sock = BufferedSocket(ours)
        reads = []
        deadline = time.monotonic() + 10
        while sum(seen) < flood and time.monotonic() < deadline:
            before = sum(seen)
            c.loop_read()
            if sum(seen) > before:
                reads.append(sum(seen) - before)
            else:
                time.sleep(0.001)
        assert sum(seen) == flood
        assert max(reads) <= MAX_PACKETS_PER_READ
        assert len(reads) >= 3
        writer.join(5)
    finally:
        ours.close()
        theirs.close()
