"""The `flowrun` program (also `python -m engine`): the command line, where SIGTERM is Ctrl-C, and a Ctrl-C
while it is still loading ends it as cleanly as one later on."""

import signal
import sys


def main() -> None:
    """Run the flowrun command line."""
    signal.signal(signal.SIGTERM, _as_ctrl_c)
    try:
        from engine.cli import main as command_line  # here, so that a Ctrl-C while it loads is caught too

        command_line()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # as engine.cli says it of a Ctrl-C no run handled
        sys.exit(130)
    finally:
        _send_telemetry()


def _send_telemetry() -> None:
    """Send the spans of the runs that ended and the metrics (engine.telemetry, when an OTLP endpoint is set) now,
    while threads can still hand work over: at exit, once the interpreter is shutting down, they no longer can."""
    telemetry = sys.modules.get("engine.telemetry")
    if telemetry is not None:
        telemetry.close()


def _as_ctrl_c(*_: object) -> None:
    """SIGTERM (a CI job cancelled, `kill`, a container stopped) stops flowrun as Ctrl-C does, so that a run is
    stored as interrupted instead of staying `running` until it is taken for crashed: whoever handles Ctrl-C at
    the time (asyncio, while runs go on) handles it, or, where Ctrl-C is ignored (a background job), it is raised."""
    if callable(signal.getsignal(signal.SIGINT)):
        signal.raise_signal(signal.SIGINT)
    else:
        raise KeyboardInterrupt


if __name__ == "__main__":
    main()
