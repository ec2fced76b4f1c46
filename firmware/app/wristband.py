"""Monitoring wristband: strap cut / tamper, battery, power; while an alarm
is active it reports a fix every ``alarm_period_s`` until cleared."""

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
        self._strap = Edge(inp.get("strap"))
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
        self.check_power(now_ms)

    def hb_fields(self, hb):
        s = self.board.inputs.get("strap")
        hb["strap"] = s if s in (STRAP_CLOSED, STRAP_OPEN, STRAP_TAMPER) else STRAP_TAMPER
