"""Boot entry on an ESP32 (copied to the board as main.py by make flash)."""

import sys


def _prefer_rom():
    # Code deployed to the ROMFS partition (make flash ROMFS=1) runs in place
    # from flash; put it ahead of the current directory so that .mpy copies
    # left on littlefs by an earlier flash cannot shadow it.
    try:
        import os
        os.stat("/rom/firmware")
    except (ImportError, OSError):
        return
    if "/rom" in sys.path:
        sys.path.remove("/rom")
    sys.path.insert(0, "/rom")


_prefer_rom()

from firmware.boards.esp32 import main  # noqa: E402

main()
