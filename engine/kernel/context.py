"""The context manager: snapshots of suspended generations, kept until they resume."""

from __future__ import annotations

from engine.kernel.storage import Storage
from engine.kernel.syscall import Syscall
from engine.llm.base import Snapshot


class ContextManager:
    """Holds the snapshot of each suspended syscall (and stores it, given storage); a syscall resumes from exactly
    where it stopped."""

    def __init__(self, storage: Storage | None = None) -> None:
        self.storage = storage
        self._snapshots: dict[str, Snapshot] = {}

    def suspend(self, syscall: Syscall, snapshot: Snapshot) -> None:
        """Keep `snapshot` as the point `syscall` resumes from."""
        self._snapshots[syscall.id] = snapshot
        if self.storage is not None:
            self.storage.record_snapshot(syscall, snapshot)

    def restore(self, syscall: Syscall) -> Snapshot | None:
        """The snapshot `syscall` resumes from (None for a fresh start); it is handed over, not kept."""
        return self._snapshots.pop(syscall.id, None)

    def __len__(self) -> int:
        return len(self._snapshots)
