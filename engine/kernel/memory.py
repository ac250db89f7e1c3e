"""Memory: a bounded short-term memory per run (the interaction log), and long-term memory in storage.

What short-term memory evicts, and what is left of it when a run ends, becomes long-term memory, which later
runs recall by keyword.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from engine.kernel.storage import Storage
from engine.kernel.tables import MemoryRow


@dataclass(frozen=True)
class Entry:
    role: str
    content: str


class Memory:
    """Short-term memories of at most `capacity` entries per run, over long-term memories in `storage`."""

    def __init__(self, storage: Storage, capacity: int = 32) -> None:
        self.storage = storage
        self.capacity = capacity
        self._runs: dict[str, tuple[str, deque[Entry]]] = {}

    def remember(self, agent: str, run: str, added: Iterable[tuple[str, str]]) -> None:
        """Add interactions, (role, content) each, to the run's short-term memory. When it is full, its older half
        moves to long-term memory: evicting in halves rather than one by one keeps the start of the prompts built
        from it the same for many steps, so a backend's cached prompt prefix goes on being reused."""
        evicted = self._add(agent, run, added)
        if evicted:
            self.storage.add_memories(agent, run, [(e.role, e.content) for e in evicted])

    def restore(self, agent: str, run: str, added: Iterable[tuple[str, str]]) -> None:
        """Rebuild a resumed run's short-term memory from what its stored steps added, as `remember` would; what it
        evicts is not stored again (it was stored when the run first got that far)."""
        self._add(agent, run, added)

    def _add(self, agent: str, run: str, added: Iterable[tuple[str, str]]) -> list[Entry]:
        _, entries = self._runs.setdefault(run, (agent, deque()))
        entries.extend(Entry(role, content) for role, content in added)
        if len(entries) <= self.capacity:
            return []
        return [entries.popleft() for _ in range(len(entries) - self.capacity // 2)]

    def recent(self, run: str) -> list[Entry]:
        """The run's short-term memory, oldest first."""
        return list(self._runs.get(run, ("", deque()))[1])

    def recall(self, agents: list[str], query: str, limit: int = 5) -> list[MemoryRow]:
        """Long-term memories of `agents` matching `query` (the access manager decides whose may be read)."""
        return self.storage.search_memories(agents, query, limit)

    def __len__(self) -> int:
        """How many runs have short-term memories here."""
        return len(self._runs)

    def end_run(self, run: str) -> None:
        """Move what is left of the run's short-term memory to long-term memory."""
        agent, entries = self._runs.pop(run, ("", deque()))
        self.storage.add_memories(agent, run, [(e.role, e.content) for e in entries])
