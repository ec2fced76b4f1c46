"""The per-lane replay window: new, late, duplicate, replayed, and its saved state."""

from __future__ import annotations

import pytest

from protocol.errors import DUPLICATE, REPLAYED, FreshnessError
from protocol.replay import WINDOW, ReplayWindow


def reason(window: ReplayWindow, epoch: int, seq: int) -> str | None:
    try:
        window.check(epoch, seq)
    except FreshnessError as e:
        return e.reason
    return None


def test_empty_window_accepts_anything() -> None:
    assert reason(ReplayWindow(), 0, 0) is None


def test_higher_seq_is_new() -> None:
    assert reason(ReplayWindow().marked(1, 10), 1, 11) is None


def test_same_seq_again_is_a_duplicate() -> None:
    assert reason(ReplayWindow().marked(1, 10), 1, 10) == DUPLICATE


def test_late_unseen_seq_inside_window_is_accepted_once() -> None:
    w = ReplayWindow().marked(1, 100)
    assert reason(w, 1, 100 - WINDOW + 1) is None
    w = w.marked(1, 100 - WINDOW + 1)
    assert reason(w, 1, 100 - WINDOW + 1) == DUPLICATE


def test_seq_below_window_is_replayed() -> None:
    assert reason(ReplayWindow().marked(1, 1000), 1, 1000 - WINDOW) == REPLAYED


def test_older_epoch_is_replayed() -> None:
    assert reason(ReplayWindow().marked(5, 0), 4, 999999) == REPLAYED


def test_newer_epoch_restarts_the_window() -> None:
    w = ReplayWindow().marked(5, 1000).marked(6, 0)
    assert (w.epoch, w.top, w.bits) == (6, 0, 1)
    assert reason(w, 6, 1) is None


def test_a_jump_far_ahead_forgets_older_bits() -> None:
    w = ReplayWindow().marked(1, 1).marked(1, 1 + 10 * WINDOW)
    assert w.bits == 1


def test_marking_is_pure() -> None:
    w = ReplayWindow().marked(1, 5)
    w.marked(1, 6)
    assert w.top == 5


@pytest.mark.parametrize(
    "marks", [[], [(1, 0)], [(3, 7), (3, 9), (3, 8)], [(2**32 - 1, 2**32 - 1)]])
def test_saved_state_restores_the_same_window(marks: list[tuple[int, int]]) -> None:
    w = ReplayWindow()
    for e, s in marks:
        w = w.marked(e, s)
    assert ReplayWindow.from_bytes(w.to_bytes()) == w


def test_malformed_saved_state_raises_value_error() -> None:
    with pytest.raises(ValueError):
        ReplayWindow.from_bytes(b"\x00" * 5)
