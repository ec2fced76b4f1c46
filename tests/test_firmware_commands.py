"""Downlink commands: only authentic, fresh commands act; each is acked."""

import os
import time

import pytest

from firmware.app.factory import make_device
from firmware.boards.sim import NoLink, SimBoard, SimClock
from firmware.devtools import provision
from protocol.auth import Signer
from protocol.message import encode
from protocol.topics import KIND_ACK, KIND_CMD
from protocol.verify import DeviceKeys, verify

DEV = "rec-cmd1"
TOPIC = "ft/v1/%s/cmd" % DEV


@pytest.fixture
def device(tmp_path):
    key = provision(tmp_path / "flash", DEV)
    board = SimBoard(str(tmp_path / "flash"), clock=SimClock(unix_s=int(time.time())),
                     link=NoLink())
    dev = make_device(board, 0)
    dev.test_key = key
    return dev


def command(key, seq, body, epoch=5, ts=None, kid=0):
    return encode(Signer(DEV, key, kid), KIND_CMD, epoch, seq, ts or int(time.time()), body)


def deliver(dev, payload, topic=TOPIC):
    dev._on_message(memoryview(topic.encode()), memoryview(payload))


def acks(dev):
    """Decoded acks the device queued, verified as the gateway would."""
    keys = {DEV: DeviceKeys({0: dev.test_key})}
    out = []
    for rec in dev._acks:
        v = verify("ft/v1/%s/ack" % DEV, rec, keys.get, lambda d, lane: None, time.time())
        assert v.ok, v
        assert v.kind == KIND_ACK
        out.append(v.envelope.body)
    return out


def test_valid_set_params_is_applied_persisted_and_acked(device):
    deliver(device, command(device.test_key, 1, {"action": "set_params",
                                                 "params": {"gps_period_s": 20}}))
    assert device.params["gps_period_s"] == 20
    assert acks(device) == [{"cmd_epoch": 5, "cmd_seq": 1, "result": "ok"}]
    assert b"20" in (device.board.store.read("params.json") or b"")


def test_forged_command_is_refused_and_not_acked(device):
    forged = command(os.urandom(32), 1, {"action": "reboot", "params": {}})
    deliver(device, forged)
    assert device._acks == [] and device.reboot_at is None
    assert device.gate.last_reason.startswith("bad_signature")


def test_replayed_command_is_not_executed_again_but_acked_again(device):
    cmd = command(device.test_key, 1, {"action": "set_params",
                                       "params": {"gps_period_s": 20}})
    deliver(device, cmd)
    assert acks(device) == [{"cmd_epoch": 5, "cmd_seq": 1, "result": "ok"}]
    device._acks.clear()                         # sent, and then lost on the way
    device.params["gps_period_s"] = 30          # changed since (e.g. another command)
    writes = device.board.store.writes
    deliver(device, cmd)                         # redelivered: its ack was lost
    assert device.gate.last_reason.startswith("duplicate")
    assert device.params["gps_period_s"] == 30   # not applied again
    assert device.board.store.writes == writes   # nothing written, nothing executed
    assert acks(device) == [{"cmd_epoch": 5, "cmd_seq": 1, "result": "ok"}]


def test_a_burst_of_repeats_queues_one_answer_and_evicts_no_other_ack(device):
    one = command(device.test_key, 1, {"action": "locate_now", "params": {}})
    two = command(device.test_key, 2, {"action": "locate_now", "params": {}})
    deliver(device, one)
    deliver(device, two)
    for _ in range(10):                          # redelivered again and again
        deliver(device, one)
    assert [a["cmd_seq"] for a in acks(device)] == [1, 2] and device.acks_dropped == 0


def test_a_repeat_gets_the_first_result_and_the_cache_is_bounded(device):
    bad = command(device.test_key, 1, {"action": "set_params", "params": {"gps_period_s": 0}})
    deliver(device, bad)
    device._acks.clear()                         # sent
    deliver(device, bad)
    assert [a["result"] for a in acks(device)] == ["bad_args"]
    for seq in range(2, 11):                     # 9 more commands push it out of the cache
        deliver(device, command(device.test_key, seq, {"action": "locate_now", "params": {}}))
    device._acks.clear()
    deliver(device, bad)
    assert device._acks == [] and device.gate.last_reason.startswith("duplicate")
    deliver(device, command(device.test_key, 10, {"action": "locate_now", "params": {}}))
    assert acks(device) == [{"cmd_epoch": 5, "cmd_seq": 10, "result": "ok"}]


def test_replay_with_a_forged_tag_is_never_answered(device):
    cmd = bytearray(command(device.test_key, 1, {"action": "locate_now", "params": {}}))
    deliver(device, bytes(cmd))
    device._acks.clear()
    cmd[-1] ^= 1
    deliver(device, bytes(cmd))
    assert device._acks == [] and device.gate.last_reason.startswith("bad_signature")


def reboot(device, tmp_path):
    """The same flash booted again."""
    board = SimBoard(str(tmp_path / "flash"), clock=SimClock(unix_s=int(time.time())),
                     link=NoLink())
    again = make_device(board, 0)
    again.test_key = device.test_key
    return again


def test_replay_after_a_reboot_is_refused_but_answered_with_the_first_result(device, tmp_path):
    """The reboot command's own ack can be lost in the reboot: the gateway's
    repeat is answered, and the device does not reboot again."""
    cmd = command(device.test_key, 1, {"action": "reboot", "params": {}})
    deliver(device, cmd)
    again = reboot(device, tmp_path)
    deliver(again, cmd)
    assert again.gate.refused == 1 and again.reboot_at is None          # not executed
    assert acks(again) == [{"cmd_epoch": 5, "cmd_seq": 1, "result": "ok"}]


def test_a_repeat_older_than_the_saved_results_is_refused_unanswered_after_a_reboot(
        device, tmp_path):
    first = command(device.test_key, 1, {"action": "locate_now", "params": {}})
    deliver(device, first)
    for seq in range(2, 11):                     # 9 more: the first one is evicted
        deliver(device, command(device.test_key, seq, {"action": "locate_now", "params": {}}))
    again = reboot(device, tmp_path)
    deliver(again, first)
    assert again._acks == [] and again.gate.refused == 1


def test_a_result_the_flash_refuses_is_still_acked_and_answers_repeats_until_reboot(device):
    def refuse(name, data):
        raise OSError(28, "no space")
    window_write = device.board.store.write_atomic
    device.board.store.write_atomic = lambda name, data: (
        refuse(name, data) if name == "cmddone" else window_write(name, data))
    cmd = command(device.test_key, 1, {"action": "locate_now", "params": {}})
    deliver(device, cmd)
    assert acks(device) == [{"cmd_epoch": 5, "cmd_seq": 1, "result": "ok"}]
    assert any("W command result not saved" in ln for ln in device.board.logs)
    device._acks.clear()                         # sent
    deliver(device, cmd)
    assert acks(device) == [{"cmd_epoch": 5, "cmd_seq": 1, "result": "ok"}]


def test_command_for_another_device_is_refused(device):
    other = encode(Signer("rec-other", device.test_key, 0), KIND_CMD, 5, 1, int(time.time()),
                   {"action": "reboot", "params": {}})
    deliver(device, other, "ft/v1/rec-other/cmd")
    deliver(device, other)
    assert device._acks == []


def test_garbage_command_is_refused_without_crashing(device):
    for junk in (b"", b"\x00" * 10, os.urandom(60), b"\x15" + os.urandom(80), b"x" * 500):
        deliver(device, junk)
    assert device._acks == [] and device.gate.refused == 5


def test_out_of_range_parameter_is_acked_bad_args_and_changes_nothing(device):
    before = dict(device.params)
    deliver(device, command(device.test_key, 1, {"action": "set_params",
                                                 "params": {"gps_period_s": 0}}))
    assert device.params == before
    assert acks(device)[0]["result"] == "bad_args"


def test_stale_command_is_refused_when_clock_is_synced(device):
    old = command(device.test_key, 1, {"action": "reboot", "params": {}},
                  ts=int(time.time()) - 40 * 86400)
    deliver(device, old)
    assert device._acks == [] and device.gate.last_reason.startswith("time_past")


def test_reboot_command_is_acked_then_reboots(device):
    deliver(device, command(device.test_key, 1, {"action": "reboot", "params": {}}))
    assert acks(device)[0]["result"] == "ok"
    device.board.clock.advance(2500)
    device.poll(device.board.clock.ticks_ms())
    assert device.board.rebooted


def test_clear_alarm_stops_fast_reporting_and_says_so(device):
    device.raise_alarm("sos", 0, 0, active=True)
    deliver(device, command(device.test_key, 1, {"action": "clear_alarm", "params": {}}))
    assert not device.alarm_active
    assert device.outbox.alarm.count == 2          # sos, alarm_cleared


NEW_KEY = bytes(range(200, 232))


def rotate(dev, seq=1, new_kid=1, key=None):
    from protocol.message import encode_rotate_key
    return encode_rotate_key(Signer(DEV, key or dev.test_key, 0), 5, seq, int(time.time()),
                             new_kid, NEW_KEY)


def test_rotate_key_installs_the_new_key_and_signs_new_records_with_it(device):
    deliver(device, rotate(device))
    keys = {DEV: DeviceKeys({0: device.test_key, 1: NEW_KEY})}
    v = verify("ft/v1/%s/ack" % DEV, device._acks[0], keys.get, lambda d, lane: None,
               time.time())
    assert v.ok and v.envelope.key_id == 1 and v.envelope.body["result"] == "ok"
    device._capture_hb(device.board.clock.ticks_ms())
    assert records_key_ids(device) == [1]


def test_rotated_key_survives_a_reboot(device, tmp_path):
    deliver(device, rotate(device))
    again = make_device(device.board, 0)
    assert (again.key_id, again.key) == (1, NEW_KEY)


def test_records_signed_before_a_rotation_keep_the_old_key_id(device):
    device._capture_hb(device.board.clock.ticks_ms())
    deliver(device, rotate(device))
    device._capture_hb(device.board.clock.ticks_ms())
    assert records_key_ids(device) == [0, 1]


def test_forged_rotate_key_is_refused_and_changes_nothing(device):
    deliver(device, rotate(device, key=os.urandom(32)))
    assert device._acks == [] and device.key_id == 0
    assert not device.board.store.exists("key.rot")


def test_commands_under_the_new_key_are_accepted_after_a_rotation(device):
    deliver(device, rotate(device))
    deliver(device, encode(Signer(DEV, NEW_KEY, 1), KIND_CMD, 5, 2, int(time.time()),
                           {"action": "locate_now", "params": {}}))
    assert len(device._acks) == 2


def records_key_ids(dev):
    from protocol.codec import decode
    buf = bytearray(140)
    lane = dev.outbox.tele
    lane.rewind()
    out = []
    while True:
        n = lane.next_record(buf)
        if not n:
            break
        out.append(decode(bytes(buf[:n])).key_id)
    lane.rewind()
    return out


def test_a_command_replaces_two_files_and_set_params_three(device):
    """Replay window before acting, result after; set_params also its params.
    A replacement is two flash writes (the new file, the rename)."""
    store = device.board.store
    before = store.writes
    deliver(device, command(device.test_key, 1, {"action": "locate_now", "params": {}}))
    assert store.writes - before == 2 * 2
    before = store.writes
    deliver(device, command(device.test_key, 2, {"action": "set_params",
                                                 "params": {"gps_period_s": 20}}))
    assert store.writes - before == 3 * 2
