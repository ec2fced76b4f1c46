"""Certificate bundles: sealed with the device key, key encrypted, any bytes
either open or raise a ProtocolError; the same on MicroPython."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import bundle
from protocol.errors import ProtocolError
from protocol.mac import Mac
from tests.conftest import run_micropython

KEY = bytes(range(32))
MACS = {3: Mac(KEY)}
CERT = bytes(range(256)) * 2
PRIV = bytes((i * 7 + 3) % 256 for i in range(121))


def sealed() -> bytes:
    return bundle.seal(MACS[3], 3, "rec-0001", 7, 9, CERT, PRIV)


def test_bundle_opens_with_the_device_key() -> None:
    assert bundle.open_bundle(MACS, "rec-0001", sealed()) == (3, 7, 9, CERT, PRIV)


def test_private_key_is_not_in_clear() -> None:
    assert PRIV[10:40] not in sealed()


def test_bundle_for_another_device_is_refused() -> None:
    with pytest.raises(ProtocolError) as e:
        bundle.open_bundle(MACS, "rec-0002", sealed())
    assert e.value.reason == "bad_signature"


def test_every_bit_flip_is_refused() -> None:
    b = sealed()
    for i in range(0, len(b) * 8, 7):
        m = bytearray(b)
        m[i // 8] ^= 1 << (i % 8)
        with pytest.raises(ProtocolError):
            bundle.open_bundle(MACS, "rec-0001", bytes(m))


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_any_bytes_open_or_raise_protocol_error(data: bytes) -> None:
    try:
        bundle.open_bundle(MACS, "rec-0001", b"FTC1" + data)
    except ProtocolError:
        pass


def test_micropython_opens_what_cpython_sealed(tmp_path) -> None:
    script = tmp_path / "open.py"
    script.write_text(
        "import binascii\n"
        "from protocol import bundle\n"
        "from protocol.mac import Mac\n"
        "k, e, s, c, p = bundle.open_bundle({3: Mac(bytes(range(32)))}, 'rec-0001', "
        "binascii.unhexlify(%r))\n"
        "print(k, e, s, binascii.hexlify(c).decode(), binascii.hexlify(p).decode())\n"
        % sealed().hex())
    proc = run_micropython(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == ["3", "7", "9", CERT.hex(), PRIV.hex()]
    assert binascii.hexlify(PRIV).decode() == PRIV.hex()
