"""Make the right device for the board's config."""

from firmware.app.config import ConfigError, load_config


def make_device(board, now_ms):
    """A Recorder or Wristband; a Device in safe idle if the config is bad."""
    kind = None
    try:
        kind = load_config(board.store).kind
    except ConfigError:
        pass
    if kind == "wristband":
        from firmware.app.wristband import Wristband
        return Wristband(board, now_ms)
    from firmware.app.recorder import Recorder
    return Recorder(board, now_ms)
