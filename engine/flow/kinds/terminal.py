"""A terminal step: it runs as a process does (with no tools), and its output is the run's answer; the run ends
there."""

from __future__ import annotations

from engine.flow.kinds.step_kind import StepKind

KIND = StepKind("terminal", ends_run=True, mermaid='(["{}"])', dot="box, style=rounded, peripheries=2")
