"""Topics and device ids: ``ft/v1/{device_id}/{kind}``.

A device id is 3 to 32 characters of ``A-Z a-z 0-9 _ -``, starting with a
letter or digit. That excludes the MQTT wildcards ``+`` and ``#``, the level
separator ``/``, ``$``, spaces and control characters, so an id is always a
single literal topic level and can serve as an ACL pattern (``%u``/``%c``).
"""

from protocol.errors import (
    DEVICE_ID_INVALID, KIND_UNKNOWN, TOPIC_INVALID, DecodeError,
)

PREFIX = "ft/v1/"
ID_MIN = 3
ID_MAX = 32

# topic kind name -> numeric kind (the same number stands in the envelope)
KIND_GPS = 1
KIND_HB = 2
KIND_ALARM = 3
KIND_STATUS = 4
KIND_CMD = 5
KIND_ACK = 6

KIND_BY_NAME = {
    "gps": KIND_GPS, "hb": KIND_HB, "alarm": KIND_ALARM,
    "status": KIND_STATUS, "cmd": KIND_CMD, "ack": KIND_ACK,
}
NAME_BY_KIND = {v: k for k, v in KIND_BY_NAME.items()}
# Kinds a device publishes; cmd flows the other way.
UPLINK_KINDS = (KIND_GPS, KIND_HB, KIND_ALARM, KIND_STATUS, KIND_ACK)


_ID_FIRST = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_CHARS = _ID_FIRST + "_-"


def is_valid_device_id(device_id):
    if not isinstance(device_id, str):
        return False
    n = len(device_id)
    if n < ID_MIN or n > ID_MAX:
        return False
    # strip() removes allowed characters from both ends in C: what is left over
    # is a character outside the set (one Python-level loop per id was 1.5 us)
    return device_id[0] in _ID_FIRST and not device_id.strip(_ID_CHARS)


def check_device_id(device_id):
    if not is_valid_device_id(device_id):
        raise DecodeError(DEVICE_ID_INVALID, repr(device_id)[:48])
    return device_id


def topic_for(device_id, kind):
    """The topic on which ``device_id`` sends (or receives) ``kind``."""
    check_device_id(device_id)
    name = NAME_BY_KIND.get(kind)
    if name is None:
        raise DecodeError(KIND_UNKNOWN, str(kind))
    return PREFIX + device_id + "/" + name


def parse_topic(topic):
    """``(device_id, kind)`` from a topic; raises DecodeError otherwise."""
    if isinstance(topic, (bytes, bytearray, memoryview)):
        try:
            topic = bytes(topic).decode()
        except UnicodeError:
            raise DecodeError(TOPIC_INVALID, "not utf-8")
    if not isinstance(topic, str) or len(topic) > 64 or not topic.startswith(PREFIX):
        raise DecodeError(TOPIC_INVALID, repr(topic)[:64])
    rest = topic[len(PREFIX):]
    slash = rest.find("/")
    if slash < 0:
        raise DecodeError(TOPIC_INVALID, "no kind level")
    device_id = rest[:slash]
    name = rest[slash + 1:]
    check_device_id(device_id)
    kind = KIND_BY_NAME.get(name)
    if kind is None:
        raise DecodeError(KIND_UNKNOWN, repr(name)[:24])
    return device_id, kind
