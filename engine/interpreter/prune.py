"""Retention (`flowrun runs prune`): stored runs removed with every record they left and the KV files their
snapshots name, chosen by age, status and how many of the newest to keep. A run that is running is never removed:
one whose process runs on this machine, or whose process ran on another machine (which cannot be checked)."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field

from engine.errors import RunStatus
from engine.flow import model
from engine.interpreter.runs import status
from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow, SnapshotRow
from engine.llm.embedded import discard


@dataclass
class Pruned:
    """The runs removed (or, in a dry run, that would be), the rows deleted by table and the KV files deleted."""

    runs: list[RunRow]
    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0


def seconds(duration: str) -> float:
    """`duration` (a number and a unit: 90s, 30m, 12h, 7d, 2w) in seconds; a ValueError saying what is expected."""
    found = model.seconds(duration)
    if found is None:
        raise ValueError(f"{duration!r} is not a duration: give a number and a unit (s, m, h, d or w), e.g. 12h "
                         "or 30d")
    return found


def chosen(runs: list[RunRow], *, older_than: float | None = None, statuses: Collection[str] = (), keep: int = 0,
           now: float | None = None) -> list[RunRow]:
    """Those of `runs` (newest first) to prune: past the `keep` newest, started more than `older_than` seconds
    before `now`, with one of `statuses` (as `runs list` shows them, crashed included) if any is given, and not
    running."""
    since = (now or time.time()) - (older_than or 0)
    return [run for run in runs[keep:]
            if status(run) != RunStatus.RUNNING and (older_than is None or run.created < since)
            and (not statuses or status(run) in statuses)]


def prune(storage: Storage, *, older_than: float | None = None, statuses: Collection[str] = (), keep: int = 0,
          memories: bool = True, dry_run: bool = False) -> Pruned:
    """Remove the runs `chosen` among all those users started in `storage` with their records (and, with
    `memories`, the long-term memories they added) and their child runs', then the KV files their snapshots name.
    A run resumed meanwhile stays."""
    runs = chosen(storage.find_runs(None), older_than=older_than, statuses=statuses, keep=keep)
    if dry_run or not runs:
        return Pruned(runs)
    tree, below = list(runs), storage.children([run.id for run in runs])
    while below:  # a child run goes with the run that started it, never alone
        tree += below
        below = storage.children([run.id for run in below])
    snapshots = storage.of_runs(SnapshotRow, [run.id for run in tree])  # read before their rows go
    ids, rows = storage.delete_runs(tree, memories=memories)
    removed = set(ids)
    files = sum(discard(snap.state) for snap in snapshots if snap.run_id in removed)
    return Pruned([run for run in runs if run.id in removed], rows, files)
