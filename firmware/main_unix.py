"""Entry point on the MicroPython unix port (and CPython):

    micropython firmware/main_unix.py --flash DIR --uart /dev/pts/N --ctl DIR/ctl.sock

See firmware/boards/unix.py for the options and the control channel.
"""

import sys


def _add_root():
    # run from a checkout (firmware/main_unix.py) or a build dir (main_unix.py)
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    root = here.rsplit("/", 1)[0] if here.endswith("firmware") else here
    if root not in sys.path:
        sys.path.insert(0, root)


_add_root()

from firmware.boards.unix import main  # noqa: E402

main(sys.argv[1:])
