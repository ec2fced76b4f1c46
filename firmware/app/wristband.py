"""Monitoring wristband: strap cut / tamper, battery, power; while an alarm
is active it reports a fix every ``alarm_period_s`` until cleared. The
active alarm and the strap state last reported are kept on flash
(state.AlarmState): a reboot keeps fast reporting, and a strap opened while
the device was off raises its alarm at boot."""

from protocol.codec import CLASS_WRISTBAND

from firmware.app.device import Device
from firmware.app.inputs import Edge, Threshold

STRAP_CLOSED = 0
STRAP_OPEN = 1
STRAP_TAMPER = 2


class Wristband(Device):
    device_class = CLASS_WRISTBAND

    def init_inputs(self, now_ms):
        inp = self.board.inputs
        # from the strap state last reported: a strap cut while the device was
        # off or rebooting is reported at the first poll
        self._strap = Edge(self.alarm_state.strap)
        self._power = Edge(inp.get("power_off"))
        self._low_batt = Threshold(5)

    def check_inputs(self, now_ms):
        inp = self.board.inputs
        if self._strap.changed(inp.get("strap")):
            s = self._strap.value
            if s == STRAP_OPEN:
                self.raise_alarm("strap_cut", 0, now_ms, active=True)
            elif s == STRAP_TAMPER:
                self.raise_alarm("tamper", 0, now_ms, active=True)
            # closing the strap again does not clear: the supervisor does
            self.save_alarm_state(s)
        self.check_power(now_ms)

    def hb_fields(self, hb):
        s = self.board.inputs.get("strap")
        hb["strap"] = s if s in (STRAP_CLOSED, STRAP_OPEN, STRAP_TAMPER) else STRAP_TAMPER
