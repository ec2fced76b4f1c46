"""Feed the hardware watchdog only while every task is alive.

Each task checks in after a step that completed; a task that hangs, or
raises on every step, stops checking in, the board's watchdog is no longer
fed and resets the device (the reset cause goes out in the next heartbeat).
The hardware watchdog cannot be stopped once started, so it is started only
after the configuration loaded.
"""

from firmware.app.compat import ticks_diff


class TaskMonitor:
    def __init__(self, tasks, max_silence_ms):
        self.max_silence_ms = max_silence_ms
        self.last = {}
        for name in tasks:
            self.last[name] = None

    def checkin(self, name, now_ms):
        self.last[name] = now_ms

    def stale(self, now_ms):
        """The first task that has not checked in recently, or None."""
        for name in self.last:
            t = self.last[name]
            if t is None or ticks_diff(now_ms, t) > self.max_silence_ms:
                return name
        return None

    def feed_if_alive(self, watchdog, now_ms):
        if self.stale(now_ms) is None:
            watchdog.feed()
            return True
        return False
