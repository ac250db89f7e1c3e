"""The `flowrun` program (also `python -m engine`): the command line, where SIGTERM is Ctrl-C, and a Ctrl-C
while it is still loading ends it as cleanly as one later on."""

import signal
import sys


def main() -> None:
    """Run the flowrun command line."""
    # A run stopped by SIGTERM (a CI job cancelled, `kill`, a container stopped) is stored as interrupted, as with
    # Ctrl-C, instead of staying `running` until it is taken for crashed: whoever handles Ctrl-C then handles it.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        from engine.cli import main as command_line  # here, so that a Ctrl-C while it loads is caught too

        command_line()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # as engine.cli says it of a Ctrl-C no run handled
        sys.exit(130)


if __name__ == "__main__":
    main()
