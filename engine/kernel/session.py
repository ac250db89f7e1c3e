"""A run's session: what the kernel keeps for one run from Kernel.open_run to Kernel.close_run, and nothing longer,
so that a process serving runs for weeks does not grow with the runs it served."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.kernel.journal import Journal


@dataclass
class RunSession:
    """A run open in the kernel. Its grants are its own: two runs of flows with the same name (agent) share
    nothing but the agent's long-term memory and storage."""

    id: str
    agent: str
    tools: frozenset[str]  # the tools its flow lists, which it may call (a privilege group may grant more)
    workspace: Path  # the directory its tools read and write in
    journal: Journal | None = None  # what a resumed or replayed run already got, given back first
    priority: int = 0  # of its model calls, unless a call says otherwise
    agents: frozenset[str] = frozenset()  # the agents it may start child runs of (its flow's `agents`)
