"""fieldtrace device firmware: one core (``firmware.app``) for the recorder
and the wristband, boards (``firmware.boards``) that map it to hardware, the
MicroPython unix port or a CPython simulation. See firmware/README.md."""
