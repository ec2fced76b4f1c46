"""make firmware (mpy-cross) and make flash (mpremote commands, dry run)."""

import subprocess
import sys

import pytest

from firmware.build import build
from firmware.devtools import ROOT, provision
from firmware.flash import commands


@pytest.mark.parametrize("board", ["unix", "esp32"])
def test_build_compiles_every_module_for_the_board(tmp_path, board):
    dest, built = build(board, tmp_path)
    names = {p.relative_to(dest).as_posix() for p in built}
    assert "firmware/app/device.mpy" in names and "protocol/codec.mpy" in names
    assert "firmware/boards/%s.mpy" % board in names
    assert ("main.py" if board == "esp32" else "main_unix.py") in names
    assert all(p.stat().st_size > 0 for p in built)


def test_build_is_runnable_by_micropython(tmp_path):
    dest, _ = build("unix", tmp_path)
    res = subprocess.run([str(ROOT / ".venv" / "bin" / "micropython"), str(dest / "main_unix.py")],
                         capture_output=True, timeout=30,
                         env={"MICROPYPATH": str(dest)})
    assert b"usage" in res.stdout        # imported everything, then asked for options


def test_build_cli_refuses_an_unknown_board():
    res = subprocess.run([sys.executable, "-m", "firmware.build", "--board", "stm32"],
                         capture_output=True, cwd=str(ROOT))
    assert res.returncode != 0


def test_flash_plan_copies_build_config_and_key(tmp_path):
    dest, _ = build("esp32", tmp_path / "build")
    provision(tmp_path / "devices" / "rec-0001", "rec-0001")
    cmds = commands("/dev/ttyUSB0", "rec-0001", tmp_path / "devices", dest)
    flat = [" ".join(c) for c in cmds]
    assert all(c[:3] == ["mpremote", "connect", "/dev/ttyUSB0"] for c in cmds)
    assert any(":/data/config.json" in c for c in flat)
    assert any(":/data/key.hex" in c for c in flat)
    assert flat[-1].endswith("reset")


def test_flash_refuses_a_config_for_another_device(tmp_path):
    dest, _ = build("esp32", tmp_path / "build")
    provision(tmp_path / "devices" / "rec-0001", "rec-0002")
    with pytest.raises(SystemExit):
        commands("/dev/ttyUSB0", "rec-0001", tmp_path / "devices", dest)


def test_flash_plan_takes_what_the_gateway_provisions(tmp_path):
    """`python -m gateway devices provision` writes key.bin (and DER files)."""
    from gateway.provision import write_files
    from gateway.registry import Registry

    dest, _ = build("esp32", tmp_path / "build")
    reg = Registry(tmp_path / "registry.json")
    reg.add("wb-0007", "wristband")
    from gateway.config import ProvisionConfig
    write_files(reg.get("wb-0007"), ProvisionConfig(), tmp_path / "devices" / "wb-0007")
    flat = [" ".join(c) for c in
            commands("/dev/ttyUSB0", "wb-0007", tmp_path / "devices", dest)]
    assert any(":/data/key.bin" in c for c in flat)
    assert any(":/data/config.json" in c for c in flat)


def test_flash_refuses_a_key_that_is_not_hex(tmp_path):
    dest, _ = build("esp32", tmp_path / "build")
    provision(tmp_path / "devices" / "rec-0001", "rec-0001")
    (tmp_path / "devices" / "rec-0001" / "key.hex").write_text("zz" * 32)
    with pytest.raises(SystemExit, match="64 hex digits"):
        commands("/dev/ttyUSB0", "rec-0001", tmp_path / "devices", dest)


def test_flash_plan_removes_the_other_key_form_from_the_board(tmp_path):
    """The device reads key.hex first: one left by an earlier flash would
    shadow a newly provisioned key.bin."""
    from gateway.config import ProvisionConfig
    from gateway.provision import write_files
    from gateway.registry import Registry

    dest, _ = build("esp32", tmp_path / "build")
    provision(tmp_path / "devices" / "wb-0007", "wb-0007", "wristband")   # key.hex
    reg = Registry(tmp_path / "registry.json")
    reg.add("wb-0007", "wristband")
    write_files(reg.get("wb-0007"), ProvisionConfig(), tmp_path / "devices" / "wb-0007")
    assert not (tmp_path / "devices" / "wb-0007" / "key.hex").exists()   # replaced
    flat = [" ".join(c) for c in
            commands("/dev/ttyUSB0", "wb-0007", tmp_path / "devices", dest)]
    rm = flat.index("mpremote connect /dev/ttyUSB0 fs rm :/data/key.hex")
    assert rm < [i for i, c in enumerate(flat) if c.endswith(":/data/key.bin")][0]


def test_flash_refuses_a_device_directory_with_two_keys(tmp_path):
    dest, _ = build("esp32", tmp_path / "build")
    provision(tmp_path / "devices" / "rec-0001", "rec-0001")
    (tmp_path / "devices" / "rec-0001" / "key.bin").write_bytes(bytes(32))
    with pytest.raises(SystemExit, match="both key.hex and key.bin"):
        commands("/dev/ttyUSB0", "rec-0001", tmp_path / "devices", dest)


def test_flash_refuses_a_hex_key_with_spaces(tmp_path):
    dest, _ = build("esp32", tmp_path / "build")
    provision(tmp_path / "devices" / "rec-0001", "rec-0001")
    spaced = "ab cd ef" + "01" * 28          # 64 characters that fromhex() accepts
    assert len(spaced) == 64 and len(bytes.fromhex(spaced)) == 31
    (tmp_path / "devices" / "rec-0001" / "key.hex").write_text(spaced)
    with pytest.raises(SystemExit, match="64 hex digits"):
        commands("/dev/ttyUSB0", "rec-0001", tmp_path / "devices", dest)


def test_build_writes_a_romfs_image_of_the_code(tmp_path):
    dest, built = build("unix", tmp_path)
    image = dest / "firmware.romfs"
    assert image in built and image.read_bytes()[:3] == b"\xd2\xcd\x31"   # ROMFS header
    mpys = [p for p in built if p.suffix == ".mpy"]
    blob = image.read_bytes()
    # every compiled module is in the image, byte for byte
    assert mpys and all(p.read_bytes() in blob for p in mpys)
    # the completion mark is written last: a deploy cut short lacks it
    assert blob.rindex(b"fieldtrace.complete") > max(blob.index(p.read_bytes()) for p in mpys)


def test_flash_plan_with_romfs_deploys_the_image_and_removes_old_code_copies(tmp_path):
    dest, _ = build("esp32", tmp_path / "build")
    provision(tmp_path / "devices" / "rec-0001", "rec-0001")
    flat = [" ".join(c) for c in commands("/dev/ttyUSB0", "rec-0001", tmp_path / "devices",
                                          dest, romfs=True)]
    deploy = flat.index("mpremote connect /dev/ttyUSB0 romfs deploy %s"
                        % (dest / "firmware.romfs"))
    assert not any(" cp -r " in c for c in flat)              # no .mpy copies on littlefs
    # the old copies (which would shadow the image) go only once the image is written
    for tree in (":/firmware", ":/protocol"):
        assert flat.index("mpremote connect /dev/ttyUSB0 fs rm -r " + tree) > deploy
    assert any(":/data/config.json" in c for c in flat) and flat[-1].endswith("reset")


def test_flash_with_romfs_refuses_a_build_without_the_image(tmp_path):
    dest, _ = build("esp32", tmp_path / "build")
    (dest / "firmware.romfs").unlink()
    provision(tmp_path / "devices" / "rec-0001", "rec-0001")
    with pytest.raises(SystemExit, match="no ROMFS image"):
        commands("/dev/ttyUSB0", "rec-0001", tmp_path / "devices", dest, romfs=True)
