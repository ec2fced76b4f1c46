"""Boards map the device core to hardware (esp32), the MicroPython unix
port (unix) or a CPython simulation (sim). The interface: base.py."""
