"""Edge and threshold detection for inputs: pure, shared by both devices."""


class Edge:
    """Reports a change of a polled input once."""

    def __init__(self, value):
        self.value = value

    def changed(self, value):
        if value == self.value:
            return False
        self.value = value
        return True


class Threshold:
    """Low-level alarm with hysteresis: fires once when ``value < low``,
    re-arms only when ``value >= low + margin`` (no flapping at the edge)."""

    def __init__(self, margin):
        self.margin = margin
        self.armed = True

    def fired(self, value, low):
        if value < 0:
            return False            # unknown reading
        if self.armed and value < low:
            self.armed = False
            return True
        if not self.armed and value >= low + self.margin:
            self.armed = True
        return False
