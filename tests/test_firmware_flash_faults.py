"""A full or failing flash: capture never stops, what cannot be kept is
dropped and counted (telemetry before alarms), an online device keeps
delivering from RAM, and a boot that cannot write its epoch waits in safe
idle instead of reboot-looping."""

import errno
import re
import time

from firmware.app.factory import make_device
from firmware.boards.sim import NoLink, SimBoard, SimClock
from firmware.boards.tcplink import TcpLink
from firmware.devtools import Collector, Track, provision
from protocol.codec import decode
from protocol.verify import DeviceKeys, verify

FAST = {"min_period_s": 1, "gps_period_s": 1}


def fail_flash(store):
    """Every flash write from now on fails as a full littlefs does."""
    saved = (store.append, store.write_atomic)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "no space")
    store.append = full
    store.write_atomic = full
    return saved


def make(tmp_path, link=None, trace=False, **prov):
    key = provision(tmp_path / "flash", "rec-ff01", "recorder", **prov)
    board = SimBoard(str(tmp_path / "flash"), clock=SimClock(unix_s=int(time.time())),
                     link=link or NoLink())
    board.trace = trace
    dev = make_device(board, 0)
    return key, board, dev


def step(board, dev, ms, track, sleep=0.0):
    board.clock.advance(ms)
    if board.clock.ms % 1000 == 0:
        track.step(1)
        board.uart.feed(track.sentences(board.clock.time()))
    dev.poll(board.clock.ms)
    if sleep:
        time.sleep(sleep)


def test_offline_full_flash_keeps_capturing_drops_telemetry_keeps_alarms(tmp_path):
    _, board, dev = make(tmp_path, params=FAST)
    fed = []
    board.watchdog.feed = lambda: fed.append(board.clock.ms)
    fail_flash(board.store)
    tr = Track()
    for i in range(600):                          # 300 s, a fix every second
        step(board, dev, 500, tr)
        if i == 400:
            board.inputs.set("sos", 1)
    assert dev.errors == 0 and not board.rebooted
    assert not [ln for ln in board.logs if ln.startswith("E sampler")]
    # the watchdog kept being fed: no task stopped checking in
    assert fed and max(b - a for a, b in zip(fed, fed[1:], strict=False)) <= 500
    assert fed[-1] == board.clock.ms
    ob = dev.outbox
    assert ob.tele.drops > 0 and ob.alarm.drops == 0 and ob.drops == ob.tele.drops
    assert ob.alarm.count == 1                    # the SOS waits in RAM, sendable
    assert ob.tele.count + ob.tele.drops + ob.alarm.count == dev.records > 200  # all counted
    errs = [ln for ln in board.logs if ln.startswith("E flash")]
    assert len(errs) == 1 and "no space" in errs[0]   # once per burst, with its reason


def test_online_failing_flash_delivers_from_ram_and_reports_its_drops(tmp_path, broker):
    key, board, dev = make(tmp_path, link=TcpLink(), trace=True, port=broker.port,
                           params=FAST,
                           broker_extra={"backoff_min_ms": 100, "backoff_max_s": 1})
    did = "rec-ff01"
    col = Collector(broker.port, "ft/v1/%s/#" % did)
    tr = Track()
    try:
        deadline = time.monotonic() + 20
        while not dev.mqtt.connected:
            assert time.monotonic() < deadline, board.logs
            step(board, dev, 100, tr, 0.005)
        fail_flash(board.store)
        for _ in range(200):                       # 20 s online: acked from RAM
            step(board, dev, 100, tr, 0.005)
        deadline = time.monotonic() + 20
        while dev.outbox.depth:
            assert time.monotonic() < deadline, board.logs[-10:]
            step(board, dev, 100, tr, 0.005)
        assert dev.outbox.drops == 0
        board.link.set_up(False)                   # a tunnel: the RAM tail fills up
        for i in range(1200):
            step(board, dev, 100, tr)
            if i == 1000:
                board.inputs.set("sos", 1)
        assert dev.outbox.tele.drops > 0 and dev.outbox.alarm.drops == 0
        board.link.set_up(True)
        deadline = time.monotonic() + 20
        while dev.outbox.depth or not dev.mqtt.connected:
            assert time.monotonic() < deadline, board.logs[-10:]
            step(board, dev, 100, tr, 0.005)
        dev._hb_next = board.clock.ms              # a heartbeat now, with the count
        deadline = time.monotonic() + 20
        while dev.outbox.depth or not any(t.endswith("/hb") for t, _ in col.messages[-3:]):
            assert time.monotonic() < deadline, board.logs[-10:]
            step(board, dev, 100, tr, 0.005)
        col.wait(lambda m: any(t.endswith("/hb") for t, _ in m[-3:]), 10)
    finally:
        col.close()
    assert dev.errors == 0 and not board.rebooted
    keys = {did: DeviceKeys({0: key})}
    got = set()
    for topic, payload in col.messages:
        v = verify(topic, payload, keys.get, lambda d, lane: None, time.time())
        assert v.ok, v
        got.add((v.envelope.epoch, v.envelope.seq))
    kept = []
    dropped = []
    for ln in board.logs:
        m = re.match(r"T (rec|drop) (\d) (\d+) (\d+)", ln)
        if m:
            (kept if m.group(1) == "rec" else dropped).append((int(m.group(3)), int(m.group(4))))
    assert set(kept) <= got                        # everything kept was delivered
    assert not set(dropped) & got and len(dropped) == dev.outbox.drops > 0
    assert any(t.endswith("/alarm") for t, _ in col.messages)
    hb = decode([p for t, p in col.messages if t.endswith("/hb")][-1]).body
    assert hb["outbox_drops"] == dev.outbox.drops


def test_boot_with_failing_flash_waits_in_idle_and_starts_when_it_recovers(tmp_path):
    provision(tmp_path / "flash", "rec-ff02", "recorder")
    board = SimBoard(str(tmp_path / "flash"), clock=SimClock(), link=NoLink())
    saved_write = board.store.write_atomic
    fail_flash(board.store)
    board.store.append = lambda *a, **k: None
    dev = make_device(board, 0)
    assert dev.idle_reason.startswith("state_error")
    fed = []
    board.watchdog.feed = lambda: fed.append(board.clock.ms)
    for _ in range(600):                           # 10 minutes
        board.clock.advance(1000)
        dev.poll(board.clock.ms)
    assert not board.rebooted and dev.idle_reason is not None
    assert len(fed) == 600
    board.store.write_atomic = saved_write         # space freed
    for _ in range(61):
        board.clock.advance(1000)
        dev.poll(board.clock.ms)
    assert dev.idle_reason is None and dev.counter.epoch >= 1
    assert dev.outbox.tele.count >= 1              # its first heartbeat
    assert any("leaving safe idle" in ln for ln in board.logs)


def test_shutdown_with_a_failing_flash_says_how_many_records_it_loses(tmp_path):
    _, board, dev = make(tmp_path, params=FAST)
    fail_flash(board.store)
    tr = Track()
    for _ in range(20):
        step(board, dev, 500, tr)
    in_ram = dev.outbox.tele.ram_count + dev.outbox.alarm.ram_count
    assert in_ram > 0
    dev.shutdown("test")
    lost = [ln for ln in board.logs if "only in RAM, lost" in ln]
    assert lost and ("E shutdown: %d records" % in_ram) in lost[0] and "no space" in lost[0]


def test_with_the_flash_failing_an_sos_pushes_a_minor_alarm_out_of_ram_not_itself(tmp_path):
    _, board, dev = make(tmp_path, params=FAST)
    fail_flash(board.store)
    tr = Track()
    for i in range(40):                               # recording on/off: minor alarms
        board.inputs.set("recording", i % 2)
        step(board, dev, 1000, tr)
    lane = dev.outbox.alarm
    assert lane.drops > 0                             # the alarm tail filled up
    minor_before = lane.ram_count
    board.inputs.set("sos", 1)
    step(board, dev, 1000, tr)
    codes = []
    p = 0
    while p < lane.ram_len:                           # what the RAM tail holds now
        n = lane.ram[p + 1]
        codes.append(lane.ram[p + 2 + 14])
        p += n + 6
    assert codes[-1] == 1 and codes.count(1) == 1     # the SOS is kept, last
    assert lane.ram_count == minor_before             # one minor alarm gave way
    assert lane.evicted_from_ram == 1


def test_when_only_critical_alarms_fill_ram_a_new_one_is_dropped_counted_and_logged(tmp_path):
    _, board, dev = make(tmp_path, params=FAST)
    fail_flash(board.store)
    for _ in range(12):
        dev.raise_alarm("sos", 1, board.clock.ms)
    lane = dev.outbox.alarm
    assert lane.drops > 0 and lane.evicted_from_ram == 0
    assert lane.ram_count + lane.drops == 12
    assert [ln for ln in board.logs if ln.startswith("E alarm 1 dropped")]


def test_a_cursor_saved_after_a_failure_says_the_flash_writes_again(tmp_path):
    """Online, records are acked from RAM and never flushed: the periodic cursor
    save is then the write that shows the flash recovered."""
    _, board, dev = make(tmp_path, params=FAST)
    saved = fail_flash(board.store)
    lane = dev.outbox.tele
    lane.dirty = True
    assert not lane.save_cursor() and dev.outbox.failing
    board.store.append, board.store.write_atomic = saved
    assert lane.save_cursor() and not dev.outbox.failing


def test_an_alarm_state_the_flash_refused_is_saved_once_it_takes_writes_again(tmp_path):
    from firmware.app.state import AlarmState

    key = provision(tmp_path / "flash", "wb-ff01", "wristband")
    assert key
    board = SimBoard(str(tmp_path / "flash"), clock=SimClock(unix_s=int(time.time())),
                     link=NoLink())
    dev = make_device(board, 0)
    saved = fail_flash(board.store)
    tr = Track()
    board.inputs.set("strap", 1)                      # cut: the state write fails
    for _ in range(4):
        step(board, dev, 500, tr)
    assert dev.alarm_active and not dev.alarm_state.saved
    board.store.append, board.store.write_atomic = saved
    for _ in range(24):                               # 12 s: one retry is due
        step(board, dev, 500, tr)
    assert dev.alarm_state.saved
    assert AlarmState(board.store).active             # a reboot now keeps the alarm
