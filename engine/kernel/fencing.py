"""Fencing: a run a worker claimed is written only while that worker still holds it.

Claiming a run bumps the epoch on its row (Storage.claim_run). A worker fences the run it claimed here, with that
epoch; every write of the run, or of a child run of it (its steps, model and tool calls, its end), checks in the
transaction that writes it that the row still has that epoch, and locks the row (FOR UPDATE), so that another
worker's claim waits until the transaction ends. A worker whose run was taken over (it froze, or was cut off from
the database, past the stall time) writes nothing more of it: its writes fail with storage.Fenced, which stops
the run there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from sqlalchemy import Connection, bindparam, select

from engine.kernel.tables import RunRow

_RUNS = RunRow.__table__  # type: ignore[attr-defined]
# Built once: this runs in every transaction of a worker's writes, and building it each time cost as much as the
# rows it fences (its compiled form is cached by SQLAlchemy either way)
_EPOCHS = select(_RUNS.c.id, _RUNS.c.epoch).where(_RUNS.c.id.in_(bindparam("roots", expanding=True))).with_for_update()


class Fences:
    """The runs this process holds fenced: each root run's epoch, and the root of each run (a child's too)."""

    def __init__(self) -> None:
        self._epochs: dict[str, int] = {}
        self._roots: dict[str, str] = {}
        self._lock = threading.Lock()  # the writer's thread reads, the event loop's adds and drops

    def fence(self, run_id: str, epoch: int) -> None:
        """Write run `run_id` (a root) and its child runs only while its row has `epoch`."""
        with self._lock:
            self._epochs[run_id] = epoch
            self._roots[run_id] = run_id

    def adopt(self, run_id: str, parent: str | None) -> None:
        """Run `run_id` is a child of run `parent`: fenced with it, if it is."""
        with self._lock:
            if parent in self._roots:
                self._roots[run_id] = self._roots[parent]

    def holds(self, run_id: str) -> bool:
        """Whether run `run_id` (or its root) is fenced here."""
        with self._lock:
            return run_id in self._roots

    def release(self, run_id: str) -> None:
        """Forget the root run `run_id` and its children (its run ended here, or was lost)."""
        with self._lock:
            self._epochs.pop(run_id, None)
            self._roots = {run: root for run, root in self._roots.items() if root != run_id}

    def lost(self, db: Connection, run_ids: Iterable[str | None]) -> set[str]:
        """Which of `run_ids` belong to a fenced root that another process claimed since; the fenced roots' rows
        are locked until `db`'s transaction ends (a claim waits for it)."""
        with self._lock:
            roots = {run: self._roots[run] for run in run_ids if run in self._roots}
            epochs = {root: self._epochs[root] for root in roots.values()}
        if not roots:
            return set()
        held = dict(db.execute(_EPOCHS, {"roots": list(epochs)}).all())
        gone = {root for root, epoch in epochs.items() if held.get(root) != epoch}
        return {run for run, root in roots.items() if root in gone}
