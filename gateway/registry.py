"""Device registry: TinyDB on an atomic write-then-rename storage, one writer.

TinyDB rewrites its whole file on every write, so a crash mid-write would
leave a torn file; ``AtomicJSONStorage`` writes a temporary file, fsyncs it
and renames it over the old one, so a reader sees either the old or the new
registry. Writers hold an exclusive ``flock`` on ``<path>.lock``: the CLI,
and the gateway when it confirms a key rotation; otherwise the gateway only
reads, and reloads when the file changes.

Record: ``{"device_id", "kind": "recorder|wristband", "current_key_id",
"keys": {"<kid>": {"key": hex, "valid_until": float|None}}, "revoked",
"created", "updated"}``. Key ids are 0..15 and wrap on rotation; a
rotated-out key stays valid until ``valid_until`` (the grace period).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinydb import Query, TinyDB
from tinydb.storages import Storage

from gateway.errors import RegistryError
from protocol.topics import is_valid_device_id
from protocol.verify import DeviceKeys

KINDS = ("recorder", "wristband")
KEY_ID_MAX = 15


class AtomicJSONStorage(Storage):
    """JSON storage that replaces the file atomically on every write."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        data: dict[str, dict[str, Any]] = json.loads(text)
        return data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(".%s.%d.tmp" % (self.path.name, os.getpid()))
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class DeviceKey:
    key_id: int
    key: bytes
    valid_until: float | None  # None: current key


@dataclass(frozen=True)
class Device:
    device_id: str
    kind: str
    current_key_id: int
    keys: tuple[DeviceKey, ...]
    revoked: bool
    created: float
    updated: float

    @property
    def current_key(self) -> bytes:
        for k in self.keys:
            if k.key_id == self.current_key_id:
                return k.key
        raise RegistryError("%s has no current key" % self.device_id)

    def usable_keys(self, now: float) -> dict[int, bytes]:
        return {k.key_id: k.key for k in self.keys
                if k.valid_until is None or k.valid_until > now}

    def next_expiry(self, now: float) -> float | None:
        times = [k.valid_until for k in self.keys
                 if k.valid_until is not None and k.valid_until > now]
        return min(times) if times else None

    def public(self) -> dict[str, Any]:
        """What `devices show` prints: everything but the key bytes."""
        return {"device_id": self.device_id, "kind": self.kind,
                "current_key_id": self.current_key_id, "revoked": self.revoked,
                "keys": [{"key_id": k.key_id, "valid_until": k.valid_until} for k in self.keys],
                "created": self.created, "updated": self.updated}


def _device_from_doc(d: dict[str, Any]) -> Device:
    keys = tuple(sorted((DeviceKey(int(kid), bytes.fromhex(v["key"]), v.get("valid_until"))
                         for kid, v in d["keys"].items()), key=lambda k: k.key_id))
    return Device(d["device_id"], d["kind"], int(d["current_key_id"]), keys,
                  bool(d["revoked"]), float(d["created"]), float(d["updated"]))


def _doc_from_device(dev: Device) -> dict[str, Any]:
    return {"device_id": dev.device_id, "kind": dev.kind, "current_key_id": dev.current_key_id,
            "keys": {str(k.key_id): {"key": k.key.hex(), "valid_until": k.valid_until}
                     for k in dev.keys},
            "revoked": dev.revoked, "created": dev.created, "updated": dev.updated}


class Registry:
    """Read and (under the writer lock) change the device registry."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _db(self, write: bool) -> Iterator[TinyDB]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(str(self.path) + ".lock", "a+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            db = TinyDB(self.path, storage=AtomicJSONStorage)
            try:
                yield db
            finally:
                db.close()
        finally:
            lock.close()

    def all(self) -> list[Device]:
        if not self.path.exists():
            return []
        with self._db(write=False) as db:
            return sorted((_device_from_doc(dict(d)) for d in db.all()),
                          key=lambda d: d.device_id)

    def get(self, device_id: str) -> Device:
        with self._db(write=False) as db:
            doc = db.get(Query().device_id == device_id)
        if doc is None or isinstance(doc, list):
            raise RegistryError("unknown device %r" % device_id, "unknown_device")
        return _device_from_doc(dict(doc))

    def _put(self, db: TinyDB, dev: Device) -> None:
        db.upsert(_doc_from_device(dev), Query().device_id == dev.device_id)

    def add(self, device_id: str, kind: str, key: bytes | None = None, key_id: int = 0,
            now: float | None = None) -> Device:
        return self.add_many([(device_id, kind, key, key_id)], now)[0]

    def add_many(self, specs: list[tuple[str, str, bytes | None, int]],
                 now: float | None = None) -> list[Device]:
        """Add devices ``(id, kind, key or None for random, key id)`` in one write."""
        t = time.time() if now is None else now
        devs = []
        for device_id, kind, key, key_id in specs:
            if not is_valid_device_id(device_id):
                raise RegistryError("invalid device id %r" % device_id, "device_id_invalid")
            if kind not in KINDS:
                raise RegistryError("kind must be one of %s" % "|".join(KINDS), "kind_invalid")
            if not 0 <= key_id <= KEY_ID_MAX:
                raise RegistryError("key id must be 0..15", "key_id_invalid")
            key = key if key is not None else secrets.token_bytes(32)
            if len(key) != 32:
                raise RegistryError("key must be 32 bytes", "key_invalid")
            devs.append(Device(device_id, kind, key_id, (DeviceKey(key_id, key, None),), False,
                               t, t))
        with self._db(write=True) as db:
            known = {d["device_id"] for d in db.all()}
            for dev in devs:
                if dev.device_id in known:
                    raise RegistryError("device %r exists" % dev.device_id, "device_exists")
                known.add(dev.device_id)
            db.insert_multiple(_doc_from_device(dev) for dev in devs)
        return devs

    def revoke(self, device_id: str, now: float | None = None) -> Device:
        t = time.time() if now is None else now
        with self._db(write=True) as db:
            doc = db.get(Query().device_id == device_id)
            if doc is None or isinstance(doc, list):
                raise RegistryError("unknown device %r" % device_id, "unknown_device")
            d = _device_from_doc(dict(doc))
            dev = Device(d.device_id, d.kind, d.current_key_id, d.keys, True, d.created, t)
            self._put(db, dev)
        return dev

    def rotate_key(self, device_id: str, grace_s: float, key: bytes | None = None,
                   now: float | None = None) -> Device:
        """New current key with the next key id (mod 16); the old one stays for ``grace_s``."""
        t = time.time() if now is None else now
        key = key if key is not None else secrets.token_bytes(32)
        with self._db(write=True) as db:
            doc = db.get(Query().device_id == device_id)
            if doc is None or isinstance(doc, list):
                raise RegistryError("unknown device %r" % device_id, "unknown_device")
            d = _device_from_doc(dict(doc))
            new_id = (d.current_key_id + 1) % (KEY_ID_MAX + 1)
            keys = [DeviceKey(k.key_id, k.key, t + grace_s if k.valid_until is None
                              else k.valid_until)
                    for k in d.keys
                    if k.key_id != new_id and (k.valid_until is None or k.valid_until > t)]
            keys.append(DeviceKey(new_id, key, None))
            dev = Device(d.device_id, d.kind, new_id,
                         tuple(sorted(keys, key=lambda k: k.key_id)), d.revoked, d.created, t)
            self._put(db, dev)
        return dev


    def expire_key(self, device_id: str, key_id: int, valid_until: float) -> Device:
        """Set when a rotated-out key stops being accepted (rotation confirmed)."""
        with self._db(write=True) as db:
            doc = db.get(Query().device_id == device_id)
            if doc is None or isinstance(doc, list):
                raise RegistryError("unknown device %r" % device_id, "unknown_device")
            d = _device_from_doc(dict(doc))
            if key_id == d.current_key_id:
                raise RegistryError("key id %d is the current key" % key_id, "key_id_invalid")
            keys = tuple(DeviceKey(k.key_id, k.key, valid_until) if k.key_id == key_id else k
                         for k in d.keys)
            dev = Device(d.device_id, d.kind, d.current_key_id, keys, d.revoked, d.created,
                         time.time())
            self._put(db, dev)
        return dev


class KeyCache:
    """The gateway's read side: ``lookup(device_id) -> DeviceKeys | None``.

    Reloads when the registry file is replaced (checked at most every
    ``check_every_s``) and when a rotated-out key's grace period ends.
    """

    def __init__(self, registry: Registry, check_every_s: float = 1.0) -> None:
        self.registry = registry
        self.check_every_s = check_every_s
        self._stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._expiry: float | None = None
        self.devices: dict[str, Device] = {}
        self._keys: dict[str, DeviceKeys] = {}
        self.reloads = 0

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.registry.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self, now: float, force: bool = False, check_now: bool = False) -> bool:
        """Reload if due (``check_now``: look at the file now); True when keys changed."""
        mono = time.monotonic()
        expired = self._expiry is not None and now >= self._expiry
        if not force and not expired and not check_now and mono < self._next_check:
            return False
        self._next_check = mono + self.check_every_s
        stamp = self._file_stamp()
        if not force and not expired and stamp == self._stamp:
            return False
        self._stamp = stamp
        devices = {d.device_id: d for d in self.registry.all()}
        keys = {}
        expiry: float | None = None
        for did, d in devices.items():
            keys[did] = DeviceKeys(d.usable_keys(now), d.revoked)
            e = d.next_expiry(now)
            if e is not None and (expiry is None or e < expiry):
                expiry = e
        self.devices, self._keys, self._expiry = devices, keys, expiry
        self.reloads += 1
        return True

    def lookup(self, device_id: str) -> DeviceKeys | None:
        return self._keys.get(device_id)
