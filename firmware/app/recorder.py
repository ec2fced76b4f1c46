"""Body-worn recorder: SOS key, recording state, storage, battery, power."""

from protocol.codec import CLASS_RECORDER

from firmware.app.device import Device
from firmware.app.inputs import Edge, Threshold


class Recorder(Device):
    device_class = CLASS_RECORDER

    def init_inputs(self, now_ms):
        inp = self.board.inputs
        self._sos = Edge(inp.get("sos"))
        self._recording = Edge(inp.get("recording"))
        self._power = Edge(inp.get("power_off"))
        self._low_batt = Threshold(5)
        self._low_storage = Threshold(100)

    def check_inputs(self, now_ms):
        inp = self.board.inputs
        if self._sos.changed(inp.get("sos")) and self._sos.value:
            # SOS stays active (fast fixes) until a clear_alarm command
            self.raise_alarm("sos", 0, now_ms, active=True)
        if self._recording.changed(inp.get("recording")):
            self.raise_alarm("recording_started" if self._recording.value
                             else "recording_stopped", 0, now_ms)
        free = self.board.storage_free_mib()
        if self._low_storage.fired(free, self.params["low_storage_mib"]):
            self.raise_alarm("low_storage", min(free, 65535), now_ms)
        self.check_power(now_ms)

    def hb_fields(self, hb):
        hb["recording"] = bool(self.board.inputs.get("recording"))
        hb["storage_free_mib"] = max(0, self.board.storage_free_mib())
