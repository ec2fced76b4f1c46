"""Boot entry on an ESP32 (copied to the board as main.py by make flash)."""

from firmware.boards.esp32 import main

main()
