"""MQTT 3.1.1 packets written byte by byte, for tests that feed a client's
read path directly (the firmware's client, the gateway's split)."""


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: bytes, payload: bytes, mid: int, qos: int) -> bytes:
    """A PUBLISH from the broker: QoS 0 carries no packet id."""
    var = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    return bytes([0x30 | qos << 1]) + remaining_length(len(var) + len(payload)) + var + payload
