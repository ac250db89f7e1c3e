"""What can go wrong, in one hierarchy, and how a run can stand.

Every error a user can meet is a FlowrunError. Like click's ClickException, the class says what follows from it:
`exit_code`, the status a command exits with when the error stops it (with its message, never a traceback), and
`ends_run`, the status a run ends with when the error stops one of its steps (None: the error is not about a run,
and one raised inside a run is a bug in flowrun), and `kind`, what a flow's `retry` and `catch` know it as (None:
neither applies, it fails the run). Front ends catch FlowrunError instead of keeping lists of classes.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run stands. Stored as its text, so a value read back from storage compares equal to its member."""

    QUEUED = "queued"  # not started yet: in a batch (progress displays), or stored for a worker to take
    RUNNING = "running"
    WAITING = "waiting"  # for a person's answer to an input step: `flowrun runs answer`, or its timeout
    FINISHED = "finished"
    INTERRUPTED = "interrupted"  # stopped by the user (Ctrl-C) or a signal
    PAUSED = "paused"  # the model was unavailable: resume it when it is back
    FAILED = "failed"
    CRASHED = "crashed"  # stored as running, but the process that ran it is gone (never stored: runs.status says it)
    LOST = "lost"  # another process took the run over (engine.kernel.fencing): this one stopped it (never stored)

    @property
    def resumable(self) -> bool:
        """Whether `flowrun resume` continues a run in this status (a failed one from its failed step). A queued run
        is a worker's to start."""
        return self in (RunStatus.INTERRUPTED, RunStatus.PAUSED, RunStatus.FAILED, RunStatus.CRASHED)

    @property
    def ended(self) -> bool:
        """Whether the run came to its end, well or not: what a replay can replay."""
        return self in (RunStatus.FINISHED, RunStatus.FAILED)


class ErrorKind(StrEnum):
    """The kinds of error a step's `retry` and `catch` name: stable, documented in the README. An error of no kind
    (a template that cannot be rendered, storage that fails) is a flaw of the flow or the machine: it fails the run."""

    MODEL_UNAVAILABLE = "model_unavailable"  # the model server could not be reached, after the kernel's retries
    BAD_OUTPUT = "bad_output"  # an answer (or arguments, or a built output) failed its schema or its labels
    TOOL_ERROR = "tool_error"  # a tool failed
    TOOL_TIMEOUT = "tool_timeout"  # a tool ran past its manifest's timeout
    STEP_TIMEOUT = "step_timeout"  # the step ran past its own `timeout`
    LIMIT = "limit"  # a limit of the flow: max_visits, max_child_runs, max_model_calls, max_tokens
    INPUT_TIMEOUT = "input_timeout"  # nobody answered an input step in its time
    CHILD_FAILED = "child_failed"  # a child run (agent, parallel branch, map item) failed
    ACCESS_DENIED = "access_denied"  # the access manager refused a tool, an agent or memory


EXIT_FAILED, EXIT_USAGE, EXIT_PAUSED, EXIT_WAITING, EXIT_INTERRUPTED = 1, 2, 3, 4, 130


class FlowrunError(Exception):
    """An error a user can meet; its message says what and what to do."""

    exit_code: int = EXIT_USAGE
    ends_run: RunStatus | None = None
    kind: ErrorKind | None = None

    def __init__(self, message: str = "", *, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class RunFailure(FlowrunError):
    """An error that ends the run it happens in as failed, with its message."""

    ends_run = RunStatus.FAILED
