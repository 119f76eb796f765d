"""``python -m flowdec_cli`` and the ``flowdec`` console script run the ``flowdec`` command."""

from __future__ import annotations

import sys


def run() -> None:
    """The command, with a Ctrl-C that lands while it is still being imported (its first few tenths of a
    second) ending it as one that lands later does: one line and exit 130, not a traceback of the import."""
    try:
        from .cli import main
        from .signals import own_the_process
    except KeyboardInterrupt:
        sys.stderr.write("flowdec: interrupted\n")
        raise SystemExit(130) from None
    own_the_process()
    main(prog_name="flowdec")


if __name__ == "__main__":
    run()
