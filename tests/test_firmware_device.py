"""The device core on a simulated board (CPython): records, flags, alarms,
fast reporting, watchdog, and a real broker round trip."""

import socket
import threading
import time

import pytest

from firmware.app.factory import make_device
from firmware.boards.sim import NoLink, SimBoard, SimClock
from firmware.boards.tcplink import TcpLink
from firmware.devtools import Collector, Track, no_fix_sentences, provision
from protocol.codec import decode
from protocol.verify import DeviceKeys, verify

NOW = 1767225600


def make(tmp_path, kind="recorder", link=None, synced=True, reset=0, **prov):
    did = ("rec-" if kind == "recorder" else "wb-") + "d001"
    key = provision(tmp_path / "flash", did, kind, **prov)
    board = SimBoard(str(tmp_path / "flash"), clock=SimClock(unix_s=NOW, synced=synced),
                     link=link or NoLink(), reset_cause=reset)
    dev = make_device(board, 0)
    dev.test_key = key
    return board, dev


def run(board, dev, seconds, track=None, step_ms=500):
    """Advance the clock, feeding a fix every second when ``track`` is given."""
    for _ in range(int(seconds * 1000 / step_ms)):
        board.clock.advance(step_ms)
        if track is not None and board.clock.ms % 1000 == 0:
            track.step(1)
            board.uart.feed(track.sentences(board.clock.time()))
        dev.poll(board.clock.ms)


def records(dev):
    out = []
    buf = bytearray(140)
    for lane in (dev.outbox.alarm, dev.outbox.tele):
        lane.rewind()
        while True:
            n = lane.next_record(buf)
            if not n:
                break
            out.append(decode(bytes(buf[:n])))
        lane.rewind()
    return out


def kinds(dev, name):
    return [r for r in records(dev) if r.kind == {"gps": 1, "hb": 2, "alarm": 3}[name]]


def test_fix_becomes_a_signed_gps_record(tmp_path):
    board, dev = make(tmp_path)
    run(board, dev, 3, Track())
    gps = kinds(dev, "gps")
    assert gps and gps[0].body["fix"] >= 1 and abs(gps[0].body["lat_e7"] - 312479000) < 2000


def test_no_fix_means_no_gps_record(tmp_path):
    board, dev = make(tmp_path)
    for _ in range(10):
        board.clock.advance(1000)
        board.uart.feed(no_fix_sentences(board.clock.time()))
        dev.poll(board.clock.ms)
    assert kinds(dev, "gps") == [] and len(kinds(dev, "hb")) == 1


def test_records_captured_offline_carry_the_backlog_flag(tmp_path):
    board, dev = make(tmp_path)
    run(board, dev, 2, Track())
    assert all(r.backlog for r in records(dev))


def test_records_before_clock_sync_carry_the_unsynced_flag(tmp_path):
    board, dev = make(tmp_path, synced=False)
    dev.poll(0)
    assert records(dev)[0].unsynced
    run(board, dev, 3, Track())                  # GNSS time sets the clock
    assert not records(dev)[-1].unsynced and board.clock.synced


def test_heartbeat_reports_reset_cause_and_outbox_depth(tmp_path):
    board, dev = make(tmp_path, reset=2)
    dev.poll(0)
    hb = kinds(dev, "hb")[0].body
    assert hb["reset_cause"] == 2 and hb["device_class"] == 1


def test_one_counter_numbers_every_record(tmp_path):
    board, dev = make(tmp_path)
    run(board, dev, 5, Track())
    board.inputs.set("sos", 1)
    run(board, dev, 1)
    seqs = sorted(r.seq for r in records(dev))
    assert seqs == list(range(len(seqs)))


def test_sos_raises_an_alarm_with_position_and_fast_reporting(tmp_path):
    board, dev = make(tmp_path, params={"gps_period_s": 600, "min_distance_m": 0,
                                        "min_heading_deg": 0})
    tr = Track(speed_ms=0)
    run(board, dev, 5, tr)
    before = len(kinds(dev, "gps"))
    board.inputs.set("sos", 1)
    run(board, dev, 61, tr)
    alarm = kinds(dev, "alarm")[0]
    assert alarm.body["alarm"] == "sos" and alarm.body["has_position"]
    assert len(kinds(dev, "gps")) - before >= 4          # every 15 s while active


@pytest.mark.parametrize("inp,value,alarm", [
    ("recording", 1, "recording_started"), ("storage", 100, "low_storage"),
    ("battery", 10, "low_battery"),
])
def test_recorder_inputs_raise_their_alarms(tmp_path, inp, value, alarm):
    board, dev = make(tmp_path)
    dev.poll(0)
    if inp == "storage":
        board.storage_mib = value
    elif inp == "battery":
        board.battery.pct = value
    else:
        board.inputs.set(inp, value)
    run(board, dev, 1)
    assert [a.body["alarm"] for a in kinds(dev, "alarm")] == [alarm]
    assert not kinds(dev, "alarm")[0].body["has_position"]   # no fix: no position


def test_low_battery_alarm_fires_once_until_recharged(tmp_path):
    board, dev = make(tmp_path)
    for pct in (14, 13, 14, 12, 25, 14):
        board.battery.pct = pct
        run(board, dev, 1)
    assert len(kinds(dev, "alarm")) == 2


def test_wristband_strap_cut_alarms_and_reports_fast_until_cleared(tmp_path):
    board, dev = make(tmp_path, "wristband", params={"gps_period_s": 600})
    tr = Track(speed_ms=0)
    run(board, dev, 3, tr)
    board.inputs.set("strap", 1)
    run(board, dev, 46, tr)
    assert kinds(dev, "alarm")[0].body["alarm"] == "strap_cut"
    assert len(kinds(dev, "gps")) >= 4
    hb_strap = [r.body["strap"] for r in kinds(dev, "hb")]
    assert hb_strap[0] == 0


def test_power_off_input_sends_alarm_and_powers_off(tmp_path):
    board, dev = make(tmp_path, "wristband")
    dev.poll(0)
    board.inputs.set("power_off", 1)
    run(board, dev, 1)
    assert board.powered_off and kinds(dev, "alarm")[0].body["alarm"] == "power_off"


def test_watchdog_is_not_fed_when_a_task_keeps_failing(tmp_path):
    board, dev = make(tmp_path)
    fed = []
    board.watchdog.feed = lambda: fed.append(board.clock.ms)
    run(board, dev, 2)
    assert fed
    dev.outbox.poll = None                       # the store task now raises
    fed.clear()
    run(board, dev, 40)
    assert fed and max(fed) <= 2000 + 30000 + 500
    assert any("E store" in ln for ln in board.logs)


def test_device_keeps_running_when_gnss_sends_garbage(tmp_path):
    import os
    board, dev = make(tmp_path)
    for _ in range(20):
        board.uart.feed(os.urandom(300))
        board.clock.advance(500)
        dev.poll(board.clock.ms)
    run(board, dev, 3, Track())
    assert kinds(dev, "gps") and dev.errors == 0
    dev._hb_next = board.clock.ms
    run(board, dev, 1)
    assert any(ln.startswith("W gnss input dropped") for ln in board.logs)


def test_cpython_device_publishes_to_a_real_broker(tmp_path, broker):
    board, dev = make(tmp_path, link=TcpLink(), port=broker.port,
                      params={"min_period_s": 1, "gps_period_s": 1})
    board.clock = SimClock(unix_s=int(time.time()))
    col = Collector(broker.port, "ft/v1/rec-d001/#")
    try:
        tr = Track()
        deadline = time.monotonic() + 20
        while dev.outbox.depth or len(col.messages) < 5:
            assert time.monotonic() < deadline, board.logs
            board.clock.advance(100)
            if board.clock.ms % 1000 == 0:
                tr.step(1)
                board.uart.feed(tr.sentences(board.clock.time()))
            dev.poll(board.clock.ms)
            time.sleep(0.01)
    finally:
        col.close()
    keys = {"rec-d001": DeviceKeys({0: dev.test_key})}
    for topic, payload in col.messages:
        assert verify(topic, payload, keys.get, lambda d, l: None, time.time()).ok


def test_broker_garbage_closes_the_session_and_device_keeps_going(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve():
        for junk in (b"\xff" * 64, b"\x20\x02\x00\x00" + b"\x30\xff\xff\xff\xff\x7f"):
            c, _ = srv.accept()
            c.recv(200)
            c.sendall(junk)
            time.sleep(0.2)
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    board, dev = make(tmp_path, link=TcpLink(), port=port,
                      broker_extra={"backoff_min_ms": 10, "backoff_max_s": 1})
    deadline = time.monotonic() + 10
    while sum("garbage" in ln for ln in board.logs) < 2:
        assert time.monotonic() < deadline, board.logs
        board.clock.advance(50)
        dev.poll(board.clock.ms)
        time.sleep(0.005)
    srv.close()
    assert dev.errors == 0 and dev.outbox.depth >= 1


class RefusingLink:
    """A link that is up but whose broker never answers."""

    signal = -80

    def __init__(self):
        self.attempts = []
        self.clock = None

    def up(self):
        return True

    def signal_dbm(self):
        return self.signal

    def open(self, host, port, tls, timeout_ms):
        self.attempts.append(self.clock.ms)
        raise OSError(111, "refused")


def test_reconnect_backs_off_exponentially_with_jitter_up_to_the_cap(tmp_path):
    link = RefusingLink()
    board, dev = make(tmp_path, link=link,
                      broker_extra={"backoff_min_ms": 1000, "backoff_max_s": 30})
    link.clock = board.clock
    run(board, dev, 300, step_ms=100)
    gaps = [b - a for a, b in zip(link.attempts, link.attempts[1:], strict=False)]
    assert len(gaps) >= 6
    assert gaps[0] < 2000 and gaps[4] > 6000               # grows...
    assert max(gaps) <= 30000 * 1.5 + 100                    # ...up to the cap
    assert len(set(gaps[-3:])) > 1                           # jitter: not lockstep


def test_power_off_alarm_reaches_the_broker_before_the_device_stops(tmp_path, broker):
    board, dev = make(tmp_path, "wristband", link=TcpLink(), port=broker.port)
    board.clock = SimClock(unix_s=int(time.time()))
    col = Collector(broker.port, "ft/v1/wb-d001/#")
    at_off = []
    board.power_off = lambda: at_off.append((board.clock.ms, dev.outbox.alarm.count,
                                             len(dev.mqtt.inflight)))
    try:
        deadline = time.monotonic() + 20
        while not dev.mqtt.connected or dev.outbox.depth:
            assert time.monotonic() < deadline, board.logs
            board.clock.advance(50)
            dev.poll(board.clock.ms)
            time.sleep(0.005)
        board.inputs.set("power_off", 1)
        pressed = board.clock.ms
        while not at_off:
            assert board.clock.ms - pressed <= 6000, board.logs
            board.clock.advance(50)
            dev.poll(board.clock.ms)
            time.sleep(0.01)
        alarms = col.wait(lambda m: [p for t, p in m if t.endswith("/alarm")], 10)
        statuses = col.wait(lambda m: [decode(p).body["state"] for t, p in m
                                       if t.endswith("/status")][-1:] == ["shutdown"], 10)
    finally:
        col.close()
    off_ms, alarms_left, inflight = at_off[0]
    # the broker acknowledged the alarm (PUBACK) before the device stopped
    assert alarms_left == 0 and inflight == 0
    assert off_ms - pressed < 5000
    assert decode(alarms[0]).body["alarm"] == "power_off"
    assert not dev.mqtt.connected                 # then the polite DISCONNECT
    assert statuses     # and, since that cancels the last will, a signed 'shutdown' status


class SilentBrokerLink:
    """Up; the broker accepts the session (CONNACK) and then never acks anything."""

    signal = -70

    def up(self):
        return True

    def signal_dbm(self):
        return self.signal

    def open(self, host, port, tls, timeout_ms):
        return ScriptedTransport(hangup=False)


class ScriptedTransport:
    """In memory: CONNACK at once, then silence or (``hangup``) a closed socket."""

    def __init__(self, hangup):
        self.inq = bytearray(b"\x20\x02\x00\x00")
        self.hangup = hangup
        self.sent = bytearray()

    def ready(self):
        return True

    def write(self, mv):
        self.sent += mv
        return len(mv)

    def readinto(self, mv):
        if self.inq:
            n = min(len(mv), len(self.inq))
            mv[:n] = self.inq[:n]
            del self.inq[:n]
            return n
        if self.hangup:
            raise OSError(104, "connection reset by peer")
        return 0

    def close(self):
        pass


def test_power_off_waits_a_bounded_time_for_acks_feeding_the_watchdog(tmp_path):
    from firmware.app.device import POWER_OFF_GRACE_MS

    board, dev = make(tmp_path, link=SilentBrokerLink())
    run(board, dev, 1, step_ms=100)
    assert dev.mqtt.connected
    fed = []
    board.watchdog.feed = lambda: fed.append(board.clock.ms)
    board.inputs.set("power_off", 1)
    pressed = board.clock.ms
    while not board.powered_off:
        assert board.clock.ms - pressed <= POWER_OFF_GRACE_MS + 500
        board.clock.advance(100)
        dev.poll(board.clock.ms)
    assert board.clock.ms - pressed >= POWER_OFF_GRACE_MS
    assert len(fed) >= POWER_OFF_GRACE_MS // 100 - 1       # fed all along
    assert dev.outbox.alarm.count == 1                      # unacked: kept on flash
    assert any("I shutdown: power off" in ln for ln in board.logs)


def reboot(tmp_path, board, dev, kind="wristband", **inputs):
    """Shut down and boot again on the same flash with these inputs."""
    dev.shutdown("test reboot")
    b2 = SimBoard(str(tmp_path / "flash"), clock=SimClock(unix_s=NOW), link=NoLink())
    for k, v in inputs.items():
        b2.inputs.set(k, v)
    d2 = make_device(b2, 0)
    return b2, d2


def test_active_alarm_and_fast_reporting_survive_a_reboot(tmp_path):
    board, dev = make(tmp_path, "wristband", params={"gps_period_s": 600})
    tr = Track(speed_ms=0)
    run(board, dev, 3, tr)
    board.inputs.set("strap", 1)
    run(board, dev, 2, tr)
    assert dev.alarm_active
    board, dev = reboot(tmp_path, board, dev, strap=1)
    assert dev.alarm_active
    run(board, dev, 50, tr)
    assert [a.body["alarm"] for a in kinds(dev, "alarm")] == ["strap_cut"]   # not twice
    since_boot = [r for r in kinds(dev, "gps") if r.epoch == dev.counter.epoch]
    assert len(since_boot) >= 4                                 # still every 15 s
    dev.raise_alarm("alarm_cleared", 0, board.clock.ms, active=False)   # clear_alarm
    board, dev = reboot(tmp_path, board, dev, strap=1)
    run(board, dev, 2, tr)
    assert not dev.alarm_active and len(kinds(dev, "alarm")) == 2   # nothing new raised


def test_strap_cut_while_the_device_was_off_alarms_at_boot(tmp_path):
    board, dev = make(tmp_path, "wristband")
    run(board, dev, 2)
    board, dev = reboot(tmp_path, board, dev, strap=1)     # cut while off
    run(board, dev, 1)
    assert [a.body["alarm"] for a in kinds(dev, "alarm")] == ["strap_cut"]
    assert dev.alarm_active
    board, dev = reboot(tmp_path, board, dev, strap=0)     # closed again while off
    dev.raise_alarm("alarm_cleared", 0, board.clock.ms, active=False)
    run(board, dev, 1)
    board, dev = reboot(tmp_path, board, dev, strap=2)     # tampered while off
    run(board, dev, 1)
    assert [a.body["alarm"] for a in kinds(dev, "alarm")][-1] == "tamper"


def test_recorder_sos_stays_active_after_a_reboot(tmp_path):
    board, dev = make(tmp_path)
    dev.poll(0)
    board.inputs.set("sos", 1)
    run(board, dev, 1)
    board, dev = reboot(tmp_path, board, dev, "recorder", sos=1)
    run(board, dev, 1)
    assert dev.alarm_active and len(kinds(dev, "alarm")) == 1


class FlakyBrokerLink(RefusingLink):
    """Up; every session gets its CONNACK, then the broker closes it at once
    (while ``hangup``)."""

    signal = -70

    def __init__(self):
        super().__init__()
        self.hangup = True
        self.last = None

    def open(self, host, port, tls, timeout_ms):
        self.attempts.append(self.clock.ms)
        self.last = ScriptedTransport(self.hangup)
        return self.last


def test_a_broker_that_closes_after_connack_gets_a_growing_backoff(tmp_path):
    link = FlakyBrokerLink()
    board, dev = make(tmp_path, link=link,
                      broker_extra={"backoff_min_ms": 1000, "backoff_max_s": 30})
    link.clock = board.clock
    run(board, dev, 120, step_ms=100)
    gaps = [b - a for a, b in zip(link.attempts, link.attempts[1:], strict=False)]
    assert 5 <= len(link.attempts) <= 12, gaps          # not one a second
    assert gaps[0] < 2000 and gaps[4] > 6000
    # a session that lasts a minute resets the backoff: the next retry is quick
    link.hangup = False
    n = len(link.attempts)
    run(board, dev, 40, step_ms=100)
    assert len(link.attempts) == n + 1 and dev.mqtt.connected
    run(board, dev, 61, step_ms=100)
    link.last.hangup = True                              # the broker goes away
    closed_at = board.clock.ms
    run(board, dev, 3, step_ms=100)
    assert len(link.attempts) == n + 2
    assert link.attempts[-1] - closed_at <= 1000 * 3 // 2 + 200


def test_shutdown_with_the_window_full_drops_the_connection_so_the_will_goes_out(tmp_path):
    """No room for the 'shutdown' status: a DISCONNECT would cancel the last
    will and the gateway would learn nothing; closing lets the broker send it."""
    link = SilentBrokerLink()
    board, dev = make(tmp_path, link=link, params={"min_period_s": 1, "gps_period_s": 1})
    transports = []
    opened = link.open
    link.open = lambda *a: transports.append(opened(*a)) or transports[-1]
    tr = Track()
    run(board, dev, 30, tr, step_ms=1000)        # fixes pile up, none acked
    assert dev.mqtt.connected and len(dev.mqtt.inflight) == dev.mqtt.max_inflight
    dev.shutdown("test")
    assert not dev.mqtt.connected
    assert not transports[-1].sent.endswith(b"\xe0\x00")      # no DISCONNECT written


def test_an_ack_lost_with_the_connection_is_sent_again_after_reconnecting(tmp_path):
    from protocol.auth import Signer
    from protocol.message import encode
    from protocol.topics import KIND_CMD

    link = SilentBrokerLink()                     # accepts the session, acks nothing
    board, dev = make(tmp_path, link=link)
    run(board, dev, 1, step_ms=100)
    assert dev.mqtt.connected
    cmd = encode(Signer("rec-d001", dev.test_key, 0), KIND_CMD, 5, 1, NOW,
                 {"action": "locate_now", "params": {}})
    dev._on_message(memoryview(b"ft/v1/rec-d001/cmd"), memoryview(cmd))
    run(board, dev, 1, step_ms=100)
    assert dev._acks == [] and len(dev._acks_out) == 1      # sent, not acknowledged
    sent = dev._acks_out[next(iter(dev._acks_out))]
    dev.mqtt.close("link lost")
    assert dev._acks == [sent] and dev._acks_out == {}      # queued again, same record
    dev._on_message(memoryview(b"ft/v1/rec-d001/cmd"), memoryview(cmd))   # redelivered
    assert dev._acks == [sent]                              # one answer, not two
