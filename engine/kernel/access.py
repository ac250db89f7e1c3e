"""The access manager: an agent calls only its own tools and reads only its own memory and storage, unless a
privilege group grants more. Every denial raises AccessDenied and is written to the audit log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.errors import ErrorKind, RunFailure
from engine.kernel.storage import Storage

ANY = "*"


class AccessDenied(RunFailure):
    """An agent asked for something it may not have."""

    kind = ErrorKind.ACCESS_DENIED


@dataclass(frozen=True)
class Group:
    """A privilege group: its `members` may call `tools` and read the memory and storage of `read_agents` (ANY for
    all)."""

    members: frozenset[str]
    tools: frozenset[str] = frozenset()
    read_agents: frozenset[str] = frozenset()


@dataclass
class AccessManager:
    """Decides and audits."""

    storage: Storage
    groups: Mapping[str, Group] = field(default_factory=dict)

    def check_tool(self, agent: str, run: str, tool: str, listed: frozenset[str]) -> None:
        """Return if `agent`'s run `run`, whose flow lists the tools `listed`, may call `tool`; else audit the
        denial and raise AccessDenied."""
        granted = listed | self._granted(agent, "tools")
        if tool in granted or ANY in granted:
            return
        self._deny(agent, run, "call_tool", tool, f"agent {agent!r} may not call tool {tool!r}: its flow does not "
                   "list it and no privilege group grants it")

    def check_agent(self, agent: str, run: str, callee: str, listed: frozenset[str]) -> None:
        """Return if `agent`'s run `run`, whose flow lists the agents `listed`, may start a run of `callee`; else
        audit the denial and raise AccessDenied."""
        if callee in listed:
            return
        self._deny(agent, run, "call_agent", callee, f"agent {agent!r} may not call agent {callee!r}: its flow "
                   "does not list it in `agents`")

    def check_read(self, agent: str, run: str, owner: str, what: str) -> None:
        """Return if `agent` may read the `what` ("memory" or "storage") of agent `owner`; else audit the denial
        and raise AccessDenied."""
        granted = self._granted(agent, "read_agents")
        if owner == agent or owner in granted or ANY in granted:
            return
        self._deny(agent, run, f"read_{what}", owner, f"agent {agent!r} may not read the {what} of agent {owner!r}")

    def _granted(self, agent: str, what: str) -> frozenset[str]:
        found: set[str] = set()
        for group in self.groups.values():
            if agent in group.members:
                found |= getattr(group, what)
        return frozenset(found)

    def _deny(self, agent: str, run: str, action: str, target: str, reason: str) -> None:
        self.storage.audit(agent, run, action, target, allowed=False, reason=reason)
        raise AccessDenied(reason)
