"""Record counter: epoch bumped durably at each boot, never a reused number."""

import os
import struct

import pytest

from firmware.app.state import (
    AlarmState, CommandWindow, RecentCommands, RecordCounter, StateError,
)
from firmware.app.store import FlashStore
from protocol.replay import ReplayWindow


def boot(path):
    c = RecordCounter(FlashStore(str(path)))
    c.boot()
    return c


def test_each_boot_gets_a_new_epoch_and_seq_restarts(tmp_path):
    a = boot(tmp_path)
    assert [a.next_seq() for _ in range(3)] == [0, 1, 2]
    b = boot(tmp_path)
    assert b.epoch == a.epoch + 1 and b.next_seq() == 0


def test_boot_that_died_writing_its_epoch_slot_is_bumped_past_on_next_boot(tmp_path):
    epochs = [boot(tmp_path).epoch for _ in range(3)]
    # the next boot writes the older slot; power fails mid-write, before any
    # record of that boot was signed
    older = min(("epoch.0", "epoch.1"),
                key=lambda n: struct.unpack(">I", (tmp_path / n).read_bytes()[:4])[0])
    (tmp_path / older).write_bytes(b"\x00\x00\x00\x05\x00")
    after = boot(tmp_path)
    assert after.epoch == epochs[-1] + 1


def test_garbage_in_both_slots_starts_from_epoch_one(tmp_path):
    (tmp_path / "epoch.0").write_bytes(os.urandom(12))
    (tmp_path / "epoch.1").write_bytes(b"junk")
    assert boot(tmp_path).epoch == 1


def test_seq_exhaustion_moves_to_a_new_epoch(tmp_path):
    c = boot(tmp_path)
    c.seq = 0xFFFFFFFF
    e = c.epoch
    assert c.next_seq() == 0 and c.epoch == e + 1
    assert boot(tmp_path).epoch == e + 2


def test_epoch_space_exhausted_refuses_to_sign(tmp_path):
    c = boot(tmp_path)
    c.epoch = 0xFFFFFFFF
    with pytest.raises(StateError):
        c._bump()


def test_command_window_survives_reboot(tmp_path):
    store = FlashStore(str(tmp_path))
    w = CommandWindow(store)
    w.save(ReplayWindow().marked(7, 3))
    assert CommandWindow(FlashStore(str(tmp_path))).window == ReplayWindow(7, 3, 1)


def test_corrupt_command_window_is_empty_not_a_crash(tmp_path):
    (tmp_path / "cmdwin").write_bytes(os.urandom(28))
    assert CommandWindow(FlashStore(str(tmp_path))).window == ReplayWindow()


def test_alarm_state_round_trips_and_a_corrupt_file_reads_as_none(tmp_path):
    store = FlashStore(str(tmp_path))
    st = AlarmState(store)
    assert (st.active, st.strap) == (False, 0)
    st.save(True, 1)
    again = AlarmState(store)
    assert (again.active, again.strap) == (True, 1)
    writes = store.writes
    again.save(True, 1)                        # unchanged: no flash write
    assert store.writes == writes
    raw = bytearray(store.read("alarm"))
    raw[0] ^= 1
    store.write_atomic("alarm", bytes(raw))
    assert (AlarmState(store).active, AlarmState(store).strap) == (False, 0)


def test_recent_command_results_survive_a_reboot_and_keep_the_last_eight(tmp_path):
    store = FlashStore(str(tmp_path))
    recent = RecentCommands(store)
    for seq in range(1, 11):
        recent.add(5, seq, seq % 4)
    again = RecentCommands(FlashStore(str(tmp_path)))
    assert again.result_of(5, 10) == 2 and again.result_of(5, 3) == 3
    assert again.result_of(5, 2) is None and len(again.entries) == 8


def test_corrupt_recent_commands_file_reads_as_empty_not_a_crash(tmp_path):
    store = FlashStore(str(tmp_path))
    RecentCommands(store).add(5, 1, 0)
    raw = bytearray((tmp_path / "cmddone").read_bytes())
    raw[3] ^= 1
    (tmp_path / "cmddone").write_bytes(bytes(raw))
    assert RecentCommands(store).entries == []
    for junk in (b"", b"\x00" * 3, os.urandom(200)):
        (tmp_path / "cmddone").write_bytes(junk)
        assert RecentCommands(store).entries == []
