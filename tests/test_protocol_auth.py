"""HMAC over hashlib (the MicroPython path) matches the standard library and
RFC 4231; the MAC binds device id and topic kind."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from protocol import mac as mac_mod
from protocol import message
from protocol.auth import Signer, mac_prefix
from protocol.topics import KIND_ALARM, KIND_GPS
from tests.conftest import run_micropython

# RFC 4231 test case 2 uses a short key; ours are always 32 bytes, so compare
# against the standard library with 32-byte keys instead.
KEY = bytes(range(32))


@pytest.mark.parametrize("can_copy", [True, False], ids=["cpython-states", "micropython-path"])
def test_hashlib_hmac_matches_stdlib(monkeypatch: pytest.MonkeyPatch, can_copy: bool) -> None:
    monkeypatch.setattr(mac_mod, "_CAN_COPY", can_copy)
    m = mac_mod.Mac(KEY)
    for msg in (b"", b"abc", bytes(range(256)) * 3):
        assert m.full((msg[:7], msg[7:])) == hmac.new(KEY, msg, hashlib.sha256).digest()
        assert m.full((msg,)) == m.full((msg,))          # the saved states are not consumed


def test_constant_time_equal_without_stdlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mac_mod, "_std_hmac", None)
    assert mac_mod.equal(b"abcd", b"abcd")
    assert not mac_mod.equal(b"abcd", b"abce")
    assert not mac_mod.equal(b"abcd", b"abc")


def test_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        mac_mod.Mac(b"short")


def test_mac_input_binds_device_id_and_kind() -> None:
    assert mac_prefix("rec-0001", KIND_GPS) == b"FT1\x08rec-0001\x01"
    a = Signer("rec-0001", KEY, 0).tag_of(b"x", KIND_GPS)
    assert a != Signer("rec-0002", KEY, 0).tag_of(b"x", KIND_GPS)
    assert a != Signer("rec-0001", KEY, 0).tag_of(b"x", KIND_ALARM)


def test_micropython_hmac_equals_cpython(tmp_path) -> None:
    script = tmp_path / "mac.py"
    script.write_text(
        "from protocol.mac import Mac\n"
        "import binascii\n"
        "m = Mac(bytes(range(32)))\n"
        "print(binascii.hexlify(m.full((b'hello ', b'world'))).decode())\n")
    proc = run_micropython(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == hmac.new(KEY, b"hello world", "sha256").hexdigest()


def test_signer_refuses_key_id_over_15() -> None:
    with pytest.raises(ValueError):
        Signer("rec-0001", KEY, 16)


def test_encode_is_deterministic() -> None:
    s = Signer("rec-0001", KEY, 1)
    body = {"cmd_epoch": 1, "cmd_seq": 2, "result": "ok"}
    assert message.encode(s, 6, 1, 2, 3, body) == message.encode(s, 6, 1, 2, 3, body)


def test_rotate_key_command_carries_the_new_key_wrapped_under_the_current_one() -> None:
    from protocol.codec import decode
    from protocol.mac import Mac
    new = bytes(range(100, 132))
    p = message.encode_rotate_key(Signer("rec-0001", KEY, 1), 3, 9, 1764806400, 2, new)
    env = decode(p)
    assert new.hex() not in p.hex()
    assert message.unwrap_rotate_key(Mac(KEY), "rec-0001", env) == new
    assert message.unwrap_rotate_key(Mac(bytes(32)), "rec-0001", env) != new


def test_micropython_unwraps_a_rotated_key(tmp_path) -> None:
    new = bytes(range(100, 132))
    p = message.encode_rotate_key(Signer("rec-0001", KEY, 1), 3, 9, 1764806400, 2, new)
    script = tmp_path / "unwrap.py"
    script.write_text(
        "import binascii\n"
        "from protocol.codec import decode\n"
        "from protocol.mac import Mac\n"
        "from protocol.message import unwrap_rotate_key\n"
        "env = decode(binascii.unhexlify(%r))\n"
        "k = unwrap_rotate_key(Mac(bytes(range(32))), 'rec-0001', env)\n"
        "print(binascii.hexlify(k).decode())\n" % p.hex())
    proc = run_micropython(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == new.hex()
