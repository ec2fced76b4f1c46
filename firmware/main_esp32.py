"""Boot entry on an ESP32 (copied to the board as main.py by make flash).

Where the code comes from: ``make flash`` copies ``.mpy`` files to littlefs
(``/firmware``, ``/protocol``), which come first on ``sys.path`` (``''`` is
``/``); ``make flash ROMFS=1`` writes them to the ROMFS partition and removes
the littlefs copies, so imports fall through to ``/rom``, where the code runs
in place. A later plain flash puts copies back on littlefs, and they win.
"""

import sys

ROMFS_COMPLETE = "/rom/fieldtrace.complete"     # last entry of the image (firmware/build.py)


def _code_found():
    import os
    try:
        os.stat("/firmware")
        return True
    except OSError:
        pass
    try:
        # mpremote writes the partition from its start: an image whose deploy
        # was cut off lacks its last entry, and half an image must not run
        os.stat(ROMFS_COMPLETE)
    except OSError:
        print("E no firmware on littlefs and no complete ROMFS image: flash again")
        return False
    if "/rom" not in sys.path:
        sys.path.append("/rom")
    return True


if _code_found():
    from firmware.boards.esp32 import main

    main()
