"""The timeline picture of runs: a row per run, showing when each of its syscalls waited for the model and when it
ran on it (every time slice, so round-robin preemption shows), as the AIOS paper draws its scheduler.

matplotlib is an optional dependency (`pip install 'flowrun[plot]'`), imported only here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from engine.errors import FlowrunError
from engine.interpreter.runs import LLM_KINDS, RunRecord

COLORS = {"waiting": "#f2c14e", "model": "#2b6cb0", "tool": "#38a169", "other": "#a0aec0"}


class PlotError(FlowrunError):
    """The picture cannot be drawn; the message says why."""


def draw(records: Sequence[RunRecord], path: Path) -> None:
    """Draw the timeline of `records` into the image file `path` (PNG, SVG or PDF, by its suffix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise PlotError("drawing a timeline needs matplotlib: pip install 'flowrun[plot]'") from None
    calls = [c for r in records for c in r.syscalls]
    if not calls:
        raise PlotError("these runs made no syscalls: there is nothing to draw")
    origin = min(c.created for c in calls)
    figure, axes = plt.subplots(figsize=(12, 1.2 + 0.45 * len(records)))
    for row, record in enumerate(records):
        for call in record.syscalls:
            kind = "model" if call.kind in LLM_KINDS else "tool" if call.kind == "tool" else "other"
            spells = [tuple(s) for s in call.slices or []] or [(call.started or call.created,
                                                                call.finished or call.created)]
            gaps = [(call.created, spells[0][0])] + [(a[1], b[0]) for a, b in itertools.pairwise(spells)]
            for start, end in gaps:
                if end > start:
                    axes.broken_barh([(start - origin, end - start)], (row - 0.3, 0.6), color=COLORS["waiting"])
            axes.broken_barh([(s - origin, max(e - s, 1e-3)) for s, e in spells], (row - 0.3, 0.6),
                             color=COLORS[kind])
    axes.set_yticks(range(len(records)), [f"{r.run.agent} {r.run.id[:8]}" for r in records])
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the first syscall")
    axes.set_title(f"{len(records)} run(s): when each syscall waited and ran")
    axes.legend(handles=[Patch(color=COLORS["waiting"], label="waiting (queued)"),
                         Patch(color=COLORS["model"], label="on the model"),
                         Patch(color=COLORS["tool"], label="tool call")], loc="upper right", fontsize="small")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:
        raise PlotError(f"cannot write {path}: {exc}") from None
    finally:
        plt.close(figure)
