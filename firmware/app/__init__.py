"""Device core: runs unchanged on MicroPython and CPython.

Nothing here imports ``machine`` or ``network``; everything a device reads
or drives comes from the board object (firmware/boards/base.py).
"""

FW_VERSION = (1, 0, 0)
