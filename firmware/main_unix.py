"""Entry point on the MicroPython unix port (and CPython):

    micropython firmware/main_unix.py --flash DIR --uart /dev/pts/N --ctl DIR/ctl.sock
        [--romfs build/firmware/unix/firmware.romfs]

See firmware/boards/unix.py for the options and the control channel.
``--romfs IMAGE`` mounts a ROMFS image of the build at ``/rom`` and imports
the firmware from it, as a board with a ROM partition does (the unix port
has no ROM partition, so the image itself sits in the heap here).
"""

import sys


def _add_root():
    # run from a checkout (firmware/main_unix.py) or a build dir (main_unix.py)
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    root = here.rsplit("/", 1)[0] if here.endswith("firmware") else here
    if root not in sys.path:
        sys.path.insert(0, root)


def _mount_romfs(argv):
    """Take ``--romfs IMAGE`` out of ``argv`` and mount the image; False if
    the image is unusable (said on stdout, with the reason)."""
    path = None
    for i, arg in enumerate(argv):
        if arg.startswith("--romfs="):
            path = arg[8:]
            del argv[i]
            break
        if arg == "--romfs":
            if i + 1 >= len(argv):
                print("E romfs: --romfs needs an image path")
                return False
            path = argv[i + 1]
            del argv[i:i + 2]
            break
    if path is None:
        return True
    try:
        import os
        import vfs
        rom = vfs.VfsRom
    except (ImportError, AttributeError):
        print("E romfs: this interpreter has no vfs.VfsRom")
        return False
    try:
        with open(path, "rb") as f:
            image = f.read()
    except OSError as e:
        print("E romfs: cannot read %s (%s)" % (path, e))
        return False
    try:
        vfs.mount(rom(image), "/rom")
    except OSError as e:
        print("E romfs: %s is not a ROMFS image (%s)" % (path, e))
        return False
    try:
        os.stat("/rom/fieldtrace.complete")       # the image's last entry (firmware/build.py)
    except OSError:
        print("E romfs: %s is not a complete fieldtrace image" % path)
        return False
    sys.path.insert(0, "/rom")      # ahead of the build directory
    return True


_add_root()
_args = sys.argv[1:]
if not _mount_romfs(_args):
    sys.exit(2)
# this file is compiled on the device: drop the boot helpers' code from the heap
del _add_root, _mount_romfs

from firmware.boards.unix import main  # noqa: E402

main(_args)
