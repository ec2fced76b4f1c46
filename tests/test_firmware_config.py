"""Config and key on flash: any problem -> a clear reason and safe idle."""

import json

import pytest

from firmware.app.config import ConfigError, load_config, load_key
from firmware.app.factory import make_device
from firmware.app.recorder import Recorder
from firmware.app.store import FlashStore
from firmware.app.wristband import Wristband
from firmware.boards.sim import NoLink, SimBoard
from firmware.devtools import provision


def board(path):
    return SimBoard(str(path), link=NoLink())


def reason_of(path):
    with pytest.raises(ConfigError) as e:
        store = FlashStore(str(path))
        load_config(store)
        load_key(store)
    return e.value.reason


def edit(path, **changes):
    doc = json.loads((path / "config.json").read_text())
    doc.update(changes)
    (path / "config.json").write_text(json.dumps(doc))


def test_provisioned_config_makes_the_right_device(tmp_path):
    provision(tmp_path / "r", "rec-0001", "recorder")
    provision(tmp_path / "w", "wb-0001", "wristband")
    assert isinstance(make_device(board(tmp_path / "r"), 0), Recorder)
    assert isinstance(make_device(board(tmp_path / "w"), 0), Wristband)


def test_missing_config_is_reported(tmp_path):
    (tmp_path / "key.hex").write_text("00" * 32)
    assert reason_of(tmp_path) == "config_missing"


def test_malformed_json_is_reported(tmp_path):
    provision(tmp_path, "rec-0001")
    (tmp_path / "config.json").write_text("{not json")
    assert reason_of(tmp_path) == "config_malformed"


@pytest.mark.parametrize("change", [
    {"device_id": "bad/id"}, {"device_id": "a+"}, {"kind": "toaster"}, {"key_id": 16},
    {"broker": {"port": 1883}}, {"broker": {"host": "h", "port": 70000}},
    {"params": {"gps_period_s": 0}}, {"params": {"gps_period_s": "60"}},
    {"params": {"no_such": 1}}, {"outbox": {"max_records": 10}},
    {"broker": {"host": "h", "tls": {"cert": "c.der"}}},
])
def test_invalid_values_are_reported(tmp_path, change):
    provision(tmp_path, "rec-0001")
    edit(tmp_path, **change)
    assert reason_of(tmp_path) == "config_invalid"


def test_missing_key_is_reported(tmp_path):
    provision(tmp_path, "rec-0001")
    (tmp_path / "key.hex").unlink()
    assert reason_of(tmp_path) == "key_missing"


@pytest.mark.parametrize("text", ["abcd", "zz" * 32, "00" * 31])
def test_malformed_key_is_reported(tmp_path, text):
    provision(tmp_path, "rec-0001")
    (tmp_path / "key.hex").write_text(text)
    assert reason_of(tmp_path) == "key_malformed"


def test_bad_config_leaves_the_device_in_safe_idle(tmp_path):
    provision(tmp_path, "rec-0001")
    (tmp_path / "config.json").write_text("[]")
    b = board(tmp_path)
    dev = make_device(b, 0)
    assert dev.idle_reason.startswith("config_invalid")
    for t in range(0, 5000, 500):
        assert dev.poll(t) > 0
    assert any("safe idle" in ln for ln in b.logs)
    assert not (tmp_path / "ob").exists() and not (tmp_path / "epoch.0").exists()


def test_safe_idle_recovers_when_a_valid_config_arrives(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    b = board(tmp_path)
    dev = make_device(b, 0)
    assert dev.idle_reason
    provision(tmp_path, "rec-0001")
    dev.poll(61000)
    assert b.rebooted
    assert isinstance(make_device(board(tmp_path), 0), Recorder)


@pytest.mark.parametrize("text", [b"1", b"x " + b"00" * 32, b"16 " + b"00" * 32, b"1 abcd"])
def test_malformed_rotated_key_puts_the_device_in_safe_idle(tmp_path, text):
    provision(tmp_path, "rec-0001")
    (tmp_path / "key.rot").write_bytes(text)
    dev = make_device(board(tmp_path), 0)
    assert dev.idle_reason is not None and "key.rot" in dev.idle_reason


@pytest.mark.parametrize("text", [b"only-one-name", b"a.der b.der"])
def test_a_bad_rotated_tls_pointer_puts_the_device_in_safe_idle(tmp_path, text):
    provision(tmp_path, "rec-0001", broker_extra={"tls": {"ca": "ca.der", "cert": "c.der",
                                                          "key": "k.der"}})
    (tmp_path / "tls.rot").write_bytes(text)
    dev = make_device(board(tmp_path), 0)
    assert dev.idle_reason is not None and "tls.rot" in dev.idle_reason
