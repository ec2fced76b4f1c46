"""The device: a non-blocking state machine over a board.

``Device(board).poll(now_ms)`` does a bounded amount of work and returns
how many ms it would like to sleep; the unix main loop waits that long (or
less) on the UART, socket and control channel, the fleet simulator steps
thousands of devices in one process the same way. Tasks, in each poll:

- gnss: bytes from the UART into the NMEA parser, clock set from GNSS;
- inputs: buttons, strap, recording, battery, storage -> alarms (subclass);
- sampler: the current fix, if due, becomes a signed record;
- heartbeat: every ``hb_interval_s``;
- net: link and MQTT session (backoff with jitter), outbox -> broker,
  PUBACKs -> outbox, downlink commands -> acks;
- store: outbox flush timer, cursor saves.

Each task checks in with the TaskMonitor after a step that did not raise;
the watchdog is fed only when all did. An exception in a task is logged
with its reason and the device keeps running.

Recorder and Wristband (recorder.py, wristband.py) add their inputs and
heartbeat fields. A missing or malformed config or key puts the device in
safe idle: no radio, no records, the watchdog fed, the reason logged every
minute, the config re-read every minute (so provisioning fixes it in place).
A flash that cannot take the boot epoch (full, failing) is safe idle too:
the epoch write is retried in place every minute and the device starts
once it succeeds (no reboot loop).
"""

import gc
import struct
from binascii import unhexlify

from protocol import codec

from protocol.auth import Signer, key_wrap_pad, xor32
from protocol.bundle import open_bundle
from protocol.errors import DUPLICATE, ProtocolError
from protocol.codec import ALARM_CODES, HEADER_LEN, MAX_ENVELOPE
from protocol.topics import (
    KIND_ACK, KIND_ALARM, KIND_CMD, KIND_GPS, KIND_HB, KIND_STATUS, topic_for,
)

from firmware.app import FW_VERSION
from firmware.app.commands import FAILED, OK, UNSUPPORTED, CommandGate, plan_set_params
from firmware.app.compat import mem_free, ticks_add, ticks_diff
from firmware.app.config import (
    ConfigError, apply_rotated_tls, load_config, load_signing_key, save_params,
    save_rotated_key, save_rotated_tls,
)
from firmware.app.mqtt import IDLE, MqttClient
from firmware.app.nmea import NmeaParser
from firmware.app.outbox import Outbox
from firmware.app.sampler import Sampler
from firmware.app.state import (
    AlarmState, CommandWindow, RecentCommands, RecordCounter, StateError,
)
from firmware.app.watchdog import TaskMonitor

TASKS = ("gnss", "inputs", "sampler", "net", "store")
FIX_FRESH_MS = 3000         # a fix older than this is not sampled
ALARM_FIX_MAX_AGE_S = 600   # an alarm carries the last fix up to this old
IDLE_RETRY_MS = 60000
# Ticks wrap: on a 32-bit port ticks_diff is valid within +-2**29 ms (6.2
# days). Once a second every stamp of the past is kept at most this old
# (twice the longest period), so none can age into the wrap.
STALE_MS = 2 * 86400 * 1000
ALARM_STATE_RETRY_MS = 10000   # a refused alarm-state write is tried again this often
POWER_OFF_GRACE_MS = 5000   # power off while connected: time for the alarm to be acked
STABLE_SESSION_MS = 60000   # the reconnect backoff resets only after a session lasted this long
_UART_CHUNK = 256
_ACK_QUEUE = 4              # acks waiting for the link; oldest dropped, counted
# Alarms that give way, in RAM, to an SOS, strap cut, tamper or power off
# when the flash fails and the alarm lane's RAM tail is full.
_MINOR_ALARMS = (ALARM_CODES["low_battery"], ALARM_CODES["recording_started"],
                 ALARM_CODES["recording_stopped"], ALARM_CODES["low_storage"],
                 ALARM_CODES["alarm_cleared"])


def _minor_alarm(envelope):
    return envelope[HEADER_LEN] in _MINOR_ALARMS


class Device:
    device_class = 0

    def __init__(self, board, now_ms):
        self.board = board
        self.log = board.log
        self.idle_reason = None
        self._idle_state = False     # idle because the flash refused the epoch
        self._idle_next = now_ms
        self.reboot_at = None
        self.power_off_at = None
        try:
            self.cfg = load_config(board.store)
            self.key_id, self.key = load_signing_key(board.store, self.cfg.key_id)
            apply_rotated_tls(board.store, self.cfg)
        except ConfigError as e:
            self._enter_idle(e, now_ms)
            return
        self._try_setup(now_ms)

    def _try_setup(self, now_ms):
        try:
            self._setup(now_ms)
        except (OSError, StateError) as e:
            # flash unusable: without a durable epoch nothing may be signed
            self._idle_state = True
            self._enter_idle("state_error: %s" % e, now_ms)
            return False
        except Exception as e:  # noqa: BLE001 - idle, log and retry; never stop the loop
            self._idle_state = True
            self._enter_idle("setup_error: %s %s" % (type(e).__name__, e), now_ms)
            return False
        self._idle_state = False
        self.idle_reason = None
        return True

    def _enter_idle(self, err, now_ms):
        self.idle_reason = str(err)
        self.log("E %s; safe idle" % self.idle_reason)
        self._idle_next = ticks_add(now_ms, IDLE_RETRY_MS)

    def _setup(self, now_ms):
        cfg = self.cfg
        b = self.board
        self.params = cfg.params
        self.counter = RecordCounter(b.store)
        self.counter.boot()                  # before the first record is signed
        self.signer = Signer(cfg.device_id, self.key, self.key_id)
        self.gate = CommandGate(cfg.device_id, self.key, self.key_id, CommandWindow(b.store))
        ob = cfg.outbox
        self.outbox = Outbox(b.store, ob["max_records"], ob["segment_records"],
                             ob["flush_records"], ob["flush_age_s"], ob["cursor_save_s"])
        self.outbox.load()
        self.nmea = NmeaParser()
        self.sampler = Sampler(self.params)
        mq = cfg.mqtt
        self.mqtt = MqttClient(cfg.device_id, mq["keepalive_s"], mq["max_inflight"],
                               mq["io_timeout_s"])
        self.mqtt.on_connected = self._on_connected
        self.mqtt.on_puback = self._on_puback
        self.mqtt.on_message = self._on_message
        self.mqtt.on_closed = self._on_closed
        self.topics = {}
        for k in (KIND_GPS, KIND_HB, KIND_ALARM, KIND_STATUS, KIND_ACK, KIND_CMD):
            self.topics[k] = topic_for(cfg.device_id, k).encode()
        self._cmd_topic = self.topics[KIND_CMD].decode()
        self._cert_topic = "ft/v1/%s/cert" % cfg.device_id
        self.watchdog_ms = cfg.watchdog_s * 1000
        self.monitor = TaskMonitor(TASKS, self.watchdog_ms)
        self._env = bytearray(MAX_ENVELOPE)      # the one envelope buffer
        self._env_mv = memoryview(self._env)
        self._send = bytearray(MAX_ENVELOPE + 8)
        self._uart_buf = bytearray(_UART_CHUNK)
        self._hb = {"device_class": self.device_class, "fw_major": FW_VERSION[0],
                    "fw_minor": FW_VERSION[1], "fw_patch": FW_VERSION[2]}
        self._acks = []
        self._acks_out = {}                  # tag -> ack sent, until its PUBACK
        self._ack_ticket = 0
        self.acks_dropped = 0
        self._done = RecentCommands(b.store)  # recent results, to answer a repeat
        self._flash_logged = False
        self.reset_cause = b.reset_cause()
        self.uptime_s = 0                    # accumulated: ticks wrap, seconds do not
        self._up_ms = now_ms
        self._fix_seen = 0
        self._nmea_logged = (0, 0, 0)
        self._fix_ms = None
        self._utc_seen = 0
        self._force_fix = True               # first fix after boot goes out
        self._hb_next = now_ms
        self._sample_next = now_ms
        self._net_next = now_ms
        self._fails = 0
        self._up_since = now_ms
        self._tls_reconnect = False
        self.alarm_state = AlarmState(b.store)
        self._alarm_retry_at = now_ms
        self.alarm_active = self.alarm_state.active     # fast reporting survives a reboot
        self.records = 0
        self.errors = 0
        self.trace = getattr(b, "trace", False)
        self.init_inputs(now_ms)
        b.watchdog.start(self.watchdog_ms)
        self.log("I boot %s %s epoch %d reset %d outbox %d" % (
            cfg.kind, cfg.device_id, self.counter.epoch, self.reset_cause, self.outbox.depth))

    # ---- subclass hooks ----

    def init_inputs(self, now_ms):
        pass

    def check_inputs(self, now_ms):
        pass

    def hb_fields(self, hb):
        pass

    def check_power(self, now_ms):
        """Low battery and the power-off input, common to both kinds: the
        subclass creates ``_low_batt`` (Threshold) and ``_power`` (Edge)."""
        pct = self.board.battery.percent()
        if pct <= 100 and self._low_batt.fired(pct, self.params["low_battery_pct"]):
            self.raise_alarm("low_battery", pct, now_ms)
        if (self._power.changed(self.board.inputs.get("power_off")) and self._power.value
                and self.power_off_at is None):
            self.raise_alarm("power_off", 0, now_ms)
            # connected: the alarm and what is in flight get POWER_OFF_GRACE_MS
            # to be acked before the DISCONNECT (poll powers off; tasks keep
            # running and feeding the watchdog meanwhile)
            self.power_off_at = ticks_add(now_ms, POWER_OFF_GRACE_MS if self.mqtt.connected
                                          else 0)

    # ---- the step ----

    def poll(self, now_ms):
        """Do what is due; returns ms until the next call is wanted."""
        if self.idle_reason is not None:
            return self._poll_idle(now_ms)
        self._task("gnss", self._gnss, now_ms)
        self._task("inputs", self.check_inputs, now_ms)
        self._task("sampler", self._sample, now_ms)
        self._task("net", self._net, now_ms)
        self._task("store", self._store, now_ms)
        self.monitor.feed_if_alive(self.board.watchdog, now_ms)
        if self.reboot_at is not None and ticks_diff(now_ms, self.reboot_at) >= 0:
            self.reboot_at = None
            self.shutdown("reboot command")
            self.board.reboot()
        if self.power_off_at is not None and (
                ticks_diff(now_ms, self.power_off_at) >= 0 or not self.mqtt.connected
                or not (self.outbox.alarm.count or self.mqtt.inflight)):
            self.power_off_at = None
            self.shutdown("power off")
            self.board.power_off()
            return 1000
        if self.mqtt.connected and (self.outbox.alarm.pending_send()
                                    or self.outbox.tele.pending_send()):
            if self.mqtt.can_publish(60):
                return 5
            return 20
        return 200 if self.mqtt.state != IDLE else 500

    def _task(self, name, fn, now_ms):
        try:
            fn(now_ms)
            self.monitor.checkin(name, now_ms)
        except MemoryError:
            gc.collect()
            self.errors += 1
            self.log("E %s: out of memory" % name)
        except Exception as e:  # noqa: BLE001 - a task must never stop the device
            self.errors += 1
            self.log("E %s: %s %s" % (name, type(e).__name__, e))

    def _poll_idle(self, now_ms):
        self.board.watchdog.feed()
        if ticks_diff(now_ms, self._idle_next) >= 0:
            if self._idle_state:
                # the config is fine: retry the state write in place
                if self._try_setup(now_ms):
                    self.log("I flash writable again, leaving safe idle")
                    return 0
                return 1000
            try:
                self.cfg = load_config(self.board.store)
                self.key_id, self.key = load_signing_key(self.board.store, self.cfg.key_id)
            except ConfigError as e:
                self._enter_idle(e, now_ms)
                return 1000
            # reboot so that the device class matches the new config
            self.log("I config now valid, rebooting out of safe idle")
            self.board.reboot()
        return 1000

    # ---- gnss and sampling ----

    def _gnss(self, now_ms):
        uart = self.board.uart
        for _ in range(8):
            n = uart.readinto(self._uart_buf)
            if not n:
                break
            self.nmea.feed(self._uart_buf, n)
        p = self.nmea
        if p.fix_updates != self._fix_seen:
            self._fix_seen = p.fix_updates
            self._fix_ms = now_ms
        if p.utc_updates != self._utc_seen and p.has_fix:
            self._utc_seen = p.utc_updates
            clock = self.board.clock
            if not clock.synced or abs(clock.time() - p.utc_s) > 2:
                clock.set_time(p.utc_s)

    def fix_age_s(self, now_ms):
        if self._fix_ms is None:
            return -1
        return ticks_diff(now_ms, self._fix_ms) // 1000

    def _age_out(self, now_ms):
        """Once a second: uptime, and no stored tick stamp older than STALE_MS."""
        up = ticks_diff(now_ms, self._up_ms)
        if up >= 1000:
            up //= 1000
            self.uptime_s += up
            self._up_ms = ticks_add(self._up_ms, up * 1000)
        if self._fix_ms is not None and ticks_diff(now_ms, self._fix_ms) > STALE_MS:
            self._fix_ms = ticks_add(now_ms, -STALE_MS)
        if ticks_diff(now_ms, self._net_next) > STALE_MS:
            self._net_next = ticks_add(now_ms, -STALE_MS)
        if ticks_diff(now_ms, self._alarm_retry_at) > STALE_MS:
            self._alarm_retry_at = ticks_add(now_ms, -STALE_MS)
        self.sampler.age_out(now_ms, STALE_MS)
        self.outbox.age_out(now_ms, STALE_MS)

    def _sample(self, now_ms):
        if ticks_diff(now_ms, self._sample_next) >= 0:
            self._sample_next = ticks_add(now_ms, 1000)
            self._age_out(now_ms)
            p = self.nmea
            fresh = (p.has_fix and self._fix_ms is not None
                     and ticks_diff(now_ms, self._fix_ms) <= FIX_FRESH_MS)
            if fresh and self.sampler.due(now_ms, p.lat_e7, p.lon_e7, p.speed_cms,
                                          p.course_cdeg, self.alarm_active, self._force_fix):
                self._force_fix = False
                self.sampler.taken(now_ms, p.lat_e7, p.lon_e7, p.course_cdeg)
                self._capture_fix(now_ms)
        if ticks_diff(now_ms, self._hb_next) >= 0:
            self._hb_next = ticks_add(now_ms, self.params["hb_interval_s"] * 1000)
            self._capture_hb(now_ms)

    # ---- records ----

    def _header(self, kind, now_ms):
        clock = self.board.clock
        flags = codec.make_flags(self.key_id, not self.mqtt.connected, not clock.synced)
        seq = self.counter.next_seq()
        return codec.pack_header(self._env, kind, flags, self.counter.epoch, seq, clock.time())

    def _pack_fix(self, off, now_ms):
        p = self.nmea
        return codec.pack_position(self._env, off, p.lat_e7, p.lon_e7, p.alt_m, p.speed_cms,
                                   p.course_cdeg, p.hdop_x10, p.fix_type(), p.sats,
                                   p.gnss_mask(), self.fix_age_s(now_ms))

    def _queue(self, kind, n, is_alarm, now_ms, evictable=None):
        n = self.signer.sign_into(self._env, n, kind)
        appends = self.outbox.flash_appends
        kept = self.outbox.append(is_alarm, self._env_mv, n, now_ms, evictable)
        if not kept and is_alarm:
            self.log("E alarm %d dropped: flash failing and its RAM tail full of alarms "
                     "as important" % self._env[HEADER_LEN])
        self.records += 1
        self._log_flash()
        if self.trace:
            self.log("T %s %d %d %d" % ("rec" if kept else "drop", kind, self.counter.epoch,
                                        self.counter.seq - 1))
            if self.outbox.flash_appends != appends:
                self._trace_flush()

    def _log_flash(self):
        """A failing flash is logged with its reason once per burst."""
        ob = self.outbox
        if ob.failing != self._flash_logged:
            self._flash_logged = ob.failing
            if ob.failing:
                self.log("E flash: %s; records kept in RAM, %d dropped so far" % (
                    ob.error, ob.drops))
            else:
                self.log("I flash writes again; %d records dropped so far" % ob.drops)

    def _trace_flush(self):
        """Trace which records are durable (tests check nothing durable is lost)."""
        for lane in (self.outbox.alarm, self.outbox.tele):
            if len(lane.last_flushed) == 8:
                self.log("T flushed %s %d %d" % (lane.name, int.from_bytes(
                    lane.last_flushed[:4], "big"), int.from_bytes(lane.last_flushed[4:], "big")))

    def _capture_fix(self, now_ms):
        n = self._header(KIND_GPS, now_ms)
        n = self._pack_fix(n, now_ms)
        self._queue(KIND_GPS, n, False, now_ms)

    def _log_gnss_noise(self):
        """Dropped NMEA input, logged with its reason once per heartbeat."""
        p = self.nmea
        now = (p.bad_checksum, p.overlong, p.garbage)
        last = self._nmea_logged
        if now != last:
            self.log("W gnss input dropped: %d bad checksum, %d overlong, %d garbage" % (
                now[0] - last[0], now[1] - last[1], now[2] - last[2]))
            self._nmea_logged = now

    def _capture_hb(self, now_ms):
        self._log_gnss_noise()
        hb = self._hb
        b = self.board
        hb["battery_pct"] = b.battery.percent()
        hb["power"] = (codec.POWER_CHARGING if b.battery.charging() else 0) | (
            codec.POWER_EXTERNAL if b.battery.external() else 0)
        hb["signal_dbm"] = b.link.signal_dbm()
        hb["outbox_depth"] = self.outbox.depth
        hb["outbox_drops"] = self.outbox.drops
        hb["free_heap"] = mem_free()
        hb["reset_cause"] = self.reset_cause
        hb["uptime_s"] = self.uptime_s
        hb["hb_interval_s"] = self.params["hb_interval_s"]
        self.hb_fields(hb)
        n = self._header(KIND_HB, now_ms)
        n = codec.pack_heartbeat(self._env, n, hb)
        self._queue(KIND_HB, n, False, now_ms)

    def raise_alarm(self, name, value, now_ms, active=None):
        """Sign an alarm record now (flushed to flash at once)."""
        if active is not None:
            self.alarm_active = active
        age = self.fix_age_s(now_ms)
        has_pos = self._fix_ms is not None and 0 <= age <= ALARM_FIX_MAX_AGE_S
        n = self._header(KIND_ALARM, now_ms)
        n = codec.pack_alarm_head(self._env, n, ALARM_CODES[name], value, has_pos)
        if has_pos:
            n = self._pack_fix(n, now_ms)
        else:
            n = codec.pack_no_position(self._env, n)
        # with the flash failing, a critical alarm may push a minor one out of RAM
        self._queue(KIND_ALARM, n, True, now_ms,
                    None if ALARM_CODES[name] in _MINOR_ALARMS else _minor_alarm)
        self.log("I alarm %s %d" % (name, value))
        if active is not None:
            self.save_alarm_state(self.alarm_state.strap)

    def save_alarm_state(self, strap):
        """Persist the active flag and the strap state last reported (after
        the alarm record is queued: a crash in between repeats an alarm
        rather than losing it)."""
        try:
            self.alarm_state.save(self.alarm_active, strap)
        except OSError as e:
            self.log("E alarm state not saved: %s" % e)

    def _signed_now(self, kind, now_ms, body):
        """A record that is published live, not kept on flash (status, ack)."""
        n = self._header(kind, now_ms)
        n = body(n)
        n = self.signer.sign_into(self._env, n, kind)
        if self.trace:
            self.log("T live %d %d %d" % (kind, self.counter.epoch, self.counter.seq - 1))
        return bytes(self._env_mv[:n])

    def _status(self, state, now_ms):
        return self._signed_now(KIND_STATUS, now_ms, lambda n: codec.pack_status(
            self._env, n, state, self.device_class, self.params["hb_interval_s"]))

    # ---- network ----

    def _net(self, now_ms):
        m = self.mqtt
        link = self.board.link
        if m.state == IDLE:
            if not link.up() or ticks_diff(now_ms, self._net_next) < 0:
                return
            self._net_next = ticks_add(now_ms, 1000)
            cfg = self.cfg
            try:
                transport = link.open(cfg.host, cfg.port, cfg.tls,
                                      cfg.mqtt["io_timeout_s"] * 1000)
            except OSError as e:
                self._backoff(now_ms, "connect: %s" % e)
                return
            will = self._status(0, now_ms)          # 'offline', signed at connect time
            m.start(transport, now_ms, self.topics[KIND_STATUS], will)
        elif not link.up():
            m.close("link down")
            return
        m.poll(now_ms)
        if self._tls_reconnect:
            self._tls_reconnect = False
            m.close("certificate rotated: reconnecting with the new pair")
            return
        if m.connected:
            if self._fails and ticks_diff(now_ms, self._up_since) >= STABLE_SESSION_MS:
                self._fails = 0
            self._send_pending()
            m.poll(now_ms)

    def _on_connected(self):
        now_ms = self.board.clock.ticks_ms()
        # not _fails = 0 here: a broker that closes right after CONNACK would
        # get a reconnect every second forever; _net resets it once the
        # session has lasted STABLE_SESSION_MS
        self._up_since = now_ms
        self.mqtt.subscribe(self.topics[KIND_CMD], 1)
        if self.cfg.tls is not None and self.cfg.tls.cert:
            self.mqtt.subscribe(self._cert_topic.encode(), 1)
        birth = self._status(1, now_ms)
        self.mqtt.publish(self.topics[KIND_STATUS], birth, len(birth), -1, 1, True)
        self.outbox.rewind()                        # resend whatever was unacked
        self.log("I connected, outbox %d" % self.outbox.depth)

    def _on_closed(self, reason):
        self.outbox.rewind()
        if self._acks_out:
            # acks sent but not acknowledged go again, oldest first (tags count down)
            self._acks[:0] = [self._acks_out[t] for t in sorted(self._acks_out, reverse=True)]
            self._acks_out = {}
            while len(self._acks) > _ACK_QUEUE:
                self._acks.pop(0)
                self.acks_dropped += 1
        self._backoff(self.board.clock.ticks_ms(), reason)

    def _backoff(self, now_ms, reason):
        """Exponential backoff with jitter before the next connect attempt."""
        self._fails += 1
        cap = self.cfg.mqtt["backoff_max_s"] * 1000
        base = self.cfg.mqtt["backoff_min_ms"]
        delay = base << min(self._fails - 1, 16)
        if delay > cap:
            delay = cap
        # jitter 0.5x .. 1.5x so a fleet does not reconnect in lockstep
        delay = delay * (128 + self.board.random8()) // 256
        self._net_next = ticks_add(now_ms, delay)
        self.log("W disconnected: %s; retry in %d ms" % (reason, delay))

    def _on_puback(self, tag):
        if tag is None or tag == -1:
            return
        if tag < -1:
            self._acks_out.pop(tag, None)
            return
        lane = self.outbox.alarm if tag & 1 else self.outbox.tele
        lane.acked(tag >> 1)

    def _send_pending(self):
        m = self.mqtt
        while self._acks and m.can_publish(40):
            rec = self._acks[0]
            self._ack_ticket += 1
            tag = -1 - self._ack_ticket              # <= -2: an ack, kept until its PUBACK
            if not m.publish(self.topics[KIND_ACK], rec, len(rec), tag):
                break
            self._acks.pop(0)
            self._acks_out[tag] = rec
        buf = self._send
        for is_alarm in (1, 0):
            lane = self.outbox.alarm if is_alarm else self.outbox.tele
            while m.can_publish(MAX_ENVELOPE):
                n = lane.next_record(buf)
                if not n:
                    break
                kind = buf[0] & 0x0F
                m.publish(self.topics[kind], buf, n, (lane.ticket << 1) | is_alarm)

    # ---- commands ----

    def _on_message(self, topic_mv, payload_mv):
        try:
            topic = bytes(topic_mv).decode()
        except UnicodeError:
            topic = "?"
        if topic == self._cert_topic:
            self._on_cert_bundle(bytes(payload_mv))
            return
        if topic != self._cmd_topic:
            self.log("W message on unexpected topic %s" % topic[:40])
            return
        clock = self.board.clock
        try:
            env = self.gate.check(topic, bytes(payload_mv), clock.time(), clock.synced)
        except OSError as e:
            # the window could not be saved: acting now would allow a replay later
            self.log("E command window not saved, command refused: %s" % e)
            return
        if env is None:
            self.log("W command refused: %s" % self.gate.last_reason)
            dup = self.gate.duplicate
            if dup is not None:
                self._ack_again(dup.epoch, dup.seq)
            return
        try:
            result = self._execute(env)
        except Exception as e:  # noqa: BLE001 - a bad command must not stop the device
            self.log("E command %s: %s" % (env.body["action"], e))
            result = FAILED
        self.log("I command %s %d.%d -> %d" % (env.body["action"], env.epoch, env.seq, result))
        self._command_done(env.epoch, env.seq, result)

    def _command_done(self, cmd_epoch, cmd_seq, result):
        """Ack a command and remember its result for a repeat (bounded)."""
        try:
            self._done.add(cmd_epoch, cmd_seq, result)
        except OSError as e:
            # only a repeat after a reboot goes unanswered: the ack itself goes out
            self.log("W command result not saved: %s" % e)
        self._queue_ack(cmd_epoch, cmd_seq, result)

    def _ack_again(self, cmd_epoch, cmd_seq):
        """An authentic repeat of a command (its ack was lost): answer it with
        the same result, without acting again. Older than the cache: no answer."""
        result = self._done.result_of(cmd_epoch, cmd_seq)
        if result is None:
            return False
        if self._ack_queued(cmd_epoch, cmd_seq):
            return True                 # a burst of repeats: one answer waits already
        self.log("I command %d.%d repeated: acked again -> %d" % (cmd_epoch, cmd_seq, result))
        self._queue_ack(cmd_epoch, cmd_seq, result)
        return True

    def _ack_queued(self, cmd_epoch, cmd_seq):
        """An answer to this command waits to be sent, or to be acknowledged."""
        for rec in self._acks + list(self._acks_out.values()):
            e, s = struct.unpack_from(">II", rec, HEADER_LEN)     # SPEC: ack body
            if e == cmd_epoch and s == cmd_seq:
                return True
        return False

    def _queue_ack(self, cmd_epoch, cmd_seq, result):
        """Sign an ack now; it goes out with the next connection (bounded, counted)."""
        rec = self._signed_now(KIND_ACK, self.board.clock.ticks_ms(), lambda n: codec.pack_ack(
            self._env, n, cmd_epoch, cmd_seq, result))
        if len(self._acks) >= _ACK_QUEUE:
            self._acks.pop(0)
            self.acks_dropped += 1
        self._acks.append(rec)

    def _on_cert_bundle(self, payload):
        """A new TLS certificate and key (SPEC 3.7): authentic and fresh like a
        command, stored beside the old pair, used from the next connection on.
        The ack goes out over that new connection, which proves the pair works."""
        try:
            _kid, epoch, seq, cert, key = open_bundle(self.gate.macs, self.cfg.device_id,
                                                      payload)
            self.gate.admit(epoch, seq)
        except ProtocolError as e:
            self.log("W certificate bundle refused: %s" % e)
            if e.reason == DUPLICATE:
                self._ack_again(epoch, seq)         # authentic: open_bundle checked it
            return
        except OSError as e:
            self.log("E command window not saved, bundle refused: %s" % e)
            return
        tag = "%d-%d" % (epoch, seq)
        try:
            save_rotated_tls(self.board.store, "tls-%s.crt.der" % tag, cert,
                             "tls-%s.key.der" % tag, key)
            result = OK
        except OSError:
            result = FAILED
        if result == OK:
            self.cfg.tls.cert = "tls-%s.crt.der" % tag
            self.cfg.tls.key = "tls-%s.key.der" % tag
        self.log("I certificate bundle %d.%d -> %d" % (epoch, seq, result))
        self._command_done(epoch, seq, result)
        if result == OK:
            self._tls_reconnect = True      # closed by _net, not inside the parser

    def _execute(self, env):
        body = env.body
        action = body["action"]
        now_ms = self.board.clock.ticks_ms()
        if action == "set_params":
            result, new = plan_set_params(self.params, body["params"])
            if new is not None:
                for k in new:
                    self.params[k] = new[k]       # the sampler shares this dict
                try:
                    save_params(self.board.store, self.params)
                except OSError:
                    return FAILED
                self._hb_next = ticks_add(now_ms, self.params["hb_interval_s"] * 1000)
            return result
        if action == "locate_now":
            self._force_fix = True
            self._sample_next = now_ms
            return OK
        if action == "reboot":
            self.reboot_at = ticks_add(now_ms, 2000)   # time for the ack to go out
            return OK
        if action == "clear_alarm":
            if self.alarm_active:
                self.raise_alarm("alarm_cleared", 0, now_ms, active=False)
            return OK
        if action == "rotate_key":
            return self._rotate_key(env)
        return UNSUPPORTED

    def _rotate_key(self, env):
        """Install the new key (SPEC 3.5): unwrap under the current key, save it
        atomically, then sign every new record with it. Records already in the
        outbox keep the old key id, which the receiver honours for a grace period."""
        kid = env.body["new_key_id"]
        pad = key_wrap_pad(self.signer.mac, self.cfg.device_id, env.epoch, env.seq, kid)
        new_key = xor32(pad, unhexlify(env.body["wrapped_key"]))
        try:
            save_rotated_key(self.board.store, kid, new_key)
        except OSError:
            return FAILED
        self.key_id, self.key = kid, new_key
        self.signer = Signer(self.cfg.device_id, new_key, kid)
        self.gate.add_key(kid, new_key)
        self.log("I key rotated to key id %d" % kid)
        return OK

    # ---- store ----

    def _store(self, now_ms):
        if self.outbox.poll(now_ms) and self.trace:
            self._trace_flush()
        self._log_flash()
        st = self.alarm_state
        if not st.saved and ticks_diff(now_ms, self._alarm_retry_at) >= 0:
            # a save the flash refused: retry, so that a reboot keeps the alarm
            self._alarm_retry_at = ticks_add(now_ms, ALARM_STATE_RETRY_MS)
            try:
                st.save(st.active, st.strap)
                self.log("I alarm state saved")
            except OSError:
                pass

    def shutdown(self, why):
        """Before a planned reboot or power off: RAM tail to flash."""
        self.log("I shutdown: %s" % why)
        try:
            unsaved = self.outbox.sync()
        except OSError as e:
            unsaved = -1
            self.log("E shutdown sync: %s" % e)
        if unsaved > 0:
            self.log("E shutdown: %d records only in RAM, lost: %s" % (
                unsaved, self.outbox.tele.error or self.outbox.alarm.error))
        if self.mqtt.connected:
            # the DISCONNECT cancels the last will: say 'shutdown' ourselves, so
            # that the gateway marks the device offline now, not after a timeout;
            # with no room for it (window full), drop the connection instead and
            # let the broker publish the will
            status = self._status(2, self.board.clock.ticks_ms())
            if not self.mqtt.publish(self.topics[KIND_STATUS], status, len(status), -1, 1,
                                     True):
                self.mqtt.close("shutdown: no room for the status, the will goes out")
                return
        self.mqtt.disconnect()
