"""Board parts: the control-channel language the simulators speak."""

import pytest

from firmware.boards.base import apply_control, parse_control
from firmware.boards.sim import NoLink, SimBoard


@pytest.mark.parametrize("line,parsed", [
    ("sos 1", ("sos", 1)), ("strap open", ("strap", 1)), ("strap closed", ("strap", 0)),
    ("strap tamper", ("strap", 2)), ("link down", ("link", 0)), ("LINK up\n", ("link", 1)),
    ("battery 15", ("battery", 15)), ("recording 1", ("recording", 1)),
    ("power off", ("power_off", 1)), ("storage 120", ("storage", 120)),
    ("signal -95", ("signal", -95)), ("reboot", ("reboot", 1)), ("stats", ("stats", 1)),
])
def test_control_lines_parse(line, parsed):
    assert parse_control(line) == parsed


@pytest.mark.parametrize("line", ["", "sos", "sos yes", "link sideways", "fly 1",
                                  "battery 1 2", "strap ajar"])
def test_bad_control_lines_are_refused_with_a_reason(line):
    with pytest.raises(ValueError):
        parse_control(line)


def test_control_lines_drive_a_simulated_board(tmp_path):
    board = SimBoard(str(tmp_path), link=NoLink())
    for line in ("sos 1", "battery 12", "charging 1", "storage 50", "strap tamper"):
        apply_control(board, *parse_control(line))
    assert board.inputs.get("sos") == 1 and board.inputs.get("strap") == 2
    assert board.battery.percent() == 12 and board.battery.charging()
    assert board.storage_free_mib() == 50
