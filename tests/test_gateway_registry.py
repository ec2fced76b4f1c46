"""Device registry: TinyDB on atomic storage, rotation with grace, revocation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.errors import RegistryError
from gateway.registry import AtomicJSONStorage, KeyCache, Registry


def test_add_and_get_round_trip(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg.json")
    key = os.urandom(32)
    reg.add("rec001", "recorder", key, key_id=2, now=10.0)
    d = reg.get("rec001")
    assert (d.kind, d.current_key_id, d.current_key, d.revoked, d.created) == (
        "recorder", 2, key, False, 10.0)


def test_add_refuses_duplicates_bad_ids_and_kinds(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg.json")
    reg.add("rec001", "recorder")
    for args, reason in ((("rec001", "recorder"), "device_exists"),
                         (("a+b", "recorder"), "device_id_invalid"),
                         (("rec002", "toaster"), "kind_invalid")):
        with pytest.raises(RegistryError) as e:
            reg.add(*args)
        assert e.value.reason == reason


def test_rotation_keeps_old_key_for_grace_and_wraps_key_id(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg.json")
    reg.add("rec001", "recorder", key_id=15, now=0.0)
    old = reg.get("rec001").current_key
    d = reg.rotate_key("rec001", grace_s=100, now=50.0)
    assert d.current_key_id == 0
    assert d.usable_keys(149.0) == {15: old, 0: d.current_key}
    assert d.usable_keys(150.0) == {0: d.current_key}


def test_key_cache_drops_rotated_key_when_grace_ends(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg.json")
    reg.add("rec001", "recorder", key_id=1, now=0.0)
    reg.rotate_key("rec001", grace_s=100, now=0.0)
    kc = KeyCache(reg, check_every_s=3600)
    kc.refresh(10.0, force=True)
    keys = kc.lookup("rec001")
    assert keys is not None and set(keys.macs) == {1, 2}
    assert kc.refresh(100.0)                        # expiry forces a reload
    keys = kc.lookup("rec001")
    assert keys is not None and set(keys.macs) == {2}


def test_key_cache_sees_revocation_after_file_replaced(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg.json")
    reg.add("rec001", "recorder")
    kc = KeyCache(reg, check_every_s=0)
    kc.refresh(0.0, force=True)
    reg.revoke("rec001")
    assert kc.refresh(0.0)
    keys = kc.lookup("rec001")
    assert keys is not None and keys.revoked
    assert kc.lookup("nobody") is None


def test_atomic_storage_leaves_old_or_new_file_never_a_torn_one(tmp_path: Path) -> None:
    path = tmp_path / "reg.json"
    st = AtomicJSONStorage(path)
    st.write({"_default": {"1": {"a": 1}}})
    inode = path.stat().st_ino
    st.write({"_default": {"1": {"a": 2}}})
    assert path.stat().st_ino != inode                # replaced by rename, not rewritten
    assert json.loads(path.read_text()) == {"_default": {"1": {"a": 2}}}
    assert [p.name for p in tmp_path.iterdir()] == ["reg.json"]   # no temp files left


def test_public_view_hides_key_bytes(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg.json")
    d = reg.add("rec001", "wristband")
    assert d.current_key.hex() not in json.dumps(d.public())


def test_unconfirmed_rotation_keeps_the_old_key_until_confirmed(tmp_path) -> None:
    from gateway.commands import UNCONFIRMED_S
    reg = Registry(tmp_path / "r.json")
    reg.add("rec001", "recorder", key=bytes(32))
    reg.rotate_key("rec001", grace_s=UNCONFIRMED_S, now=0.0)
    assert 0 in reg.get("rec001").usable_keys(30 * 86400.0)    # a month offline: still valid
    reg.expire_key("rec001", 0, valid_until=100.0)
    assert 0 not in reg.get("rec001").usable_keys(101.0)


def test_the_current_key_cannot_be_expired(tmp_path) -> None:
    reg = Registry(tmp_path / "r.json")
    reg.add("rec001", "recorder", key=bytes(32))
    with pytest.raises(RegistryError):
        reg.expire_key("rec001", 0, valid_until=1.0)
