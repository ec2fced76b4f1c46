"""``python -m gateway`` and the ``fieldtrace-gateway`` command."""

from __future__ import annotations

import sys

from gateway.cli import main as _main


def main() -> None:
    sys.exit(_main())


if __name__ == "__main__":
    main()
