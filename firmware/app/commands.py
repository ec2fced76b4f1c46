"""Downlink commands: authenticate, decide, answer. Pure decision logic.

A command is accepted only if ``protocol.verify.verify`` accepts it: signed
by the gateway with this device's key for the ``cmd`` topic kind, fresh in
the command lane's replay window (which the device keeps on flash), and
within the time limits when the device clock is synced. Anything else is
refused with the verifier's reason and *not* answered: an ack to a forged
command would only tell the forger something.

An authenticated command always gets an ack: ``ok``, ``bad_args`` (a
parameter out of range: nothing is changed), ``unsupported`` or ``failed``.
An authentic repeat (the gateway resends a command whose ack it did not
get) is not executed again; the device answers it with the result it gave
the first time, from a small cache of recent commands.
"""

from protocol.codec import ACK_RESULTS
from protocol.errors import DUPLICATE
from protocol.mac import Mac
from protocol.replay import LANE_CMD
from protocol.verify import DeviceKeys, Limits, verify

from firmware.app.config import check_param

ACK_CODES = {}
for _code in ACK_RESULTS:
    ACK_CODES[ACK_RESULTS[_code]] = _code
OK = ACK_CODES["ok"]
BAD_ARGS = ACK_CODES["bad_args"]
UNSUPPORTED = ACK_CODES["unsupported"]
FAILED = ACK_CODES["failed"]

# Unsynced device clock: the time check cannot mean anything, skip it.
_NO_TIME_LIMITS = Limits(max_future_s=1 << 31, max_past_s=1 << 31)
_LIMITS = Limits()


class CommandGate:
    """Verifies commands for one device against its key and window."""

    def __init__(self, device_id, key, key_id, window_store):
        self.device_id = device_id
        self._keys = DeviceKeys({key_id: key})
        self._windows = window_store      # state.CommandWindow
        self.refused = 0
        self.last_reason = ""
        self.duplicate = None             # envelope of the last authentic repeat

    @property
    def macs(self):
        return self._keys.macs

    def admit(self, epoch, seq):
        """Freshness of a command that is not an envelope (a certificate bundle):
        raises FreshnessError, else remembers it before the caller acts."""
        self._windows.window.check(epoch, seq)
        self._windows.save(self._windows.window.marked(epoch, seq))

    def add_key(self, key_id, key):
        """After a rotation: commands under the new key id are accepted too."""
        self._keys.macs[key_id] = Mac(key)

    def _lookup(self, device_id):
        return self._keys if device_id == self.device_id else None

    def _window_of(self, device_id, lane):
        return self._windows.window if lane == LANE_CMD else None

    def check(self, topic, payload, now_s, synced):
        """The decoded envelope of an authentic, fresh command, or None."""
        verdict = verify(topic, payload, self._lookup, self._window_of, now_s,
                         _LIMITS if synced else _NO_TIME_LIMITS)
        self.duplicate = None
        if not verdict.ok:
            self.refused += 1
            self.last_reason = "%s %s" % (verdict.reason, verdict.detail)
            if verdict.reason == DUPLICATE:
                # authentic (the tag is checked before the window): the
                # caller may answer it again, never act on it again
                self.duplicate = verdict.envelope
            return None
        if verdict.lane != LANE_CMD:
            self.refused += 1
            self.last_reason = "kind_mismatch not a command"
            return None
        # remember before acting: a replay after a crash is still refused
        self._windows.save(verdict.window)
        return verdict.envelope


def plan_set_params(current, params):
    """(result, new parameter dict or None) for a set_params command."""
    if not params:
        return BAD_ARGS, None
    for name in params:
        if not check_param(name, params[name]):
            return BAD_ARGS, None
    new = {}
    for name in current:
        new[name] = current[name]
    for name in params:
        new[name] = params[name]
    return OK, new
