"""Putting a kernel together for flows: their tools' code loaded from the manifests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from engine.flow.manifest import ToolManifest
from engine.flow.model import Flow
from engine.kernel.access import Group
from engine.kernel.kernel import Kernel
from engine.kernel.scheduler import Policy
from engine.kernel.storage import Storage
from engine.kernel.tools import tool_from_manifest
from engine.llm.base import Backend


def kernel_for(flows: Iterable[Flow], backend: Backend, storage: Storage, manifests: Mapping[str, ToolManifest], *,
               policy: Policy = Policy.FIFO, groups: Mapping[str, Group] | None = None,
               workspaces: Path | None = None) -> Kernel:
    """A kernel on `backend` and `storage` with the tools `flows` use (a validated flow names only known tools)."""
    names = sorted({name for flow in flows for name in flow.tools})
    tools = [tool_from_manifest(manifests[name]) for name in names]
    return Kernel(backend, storage, policy=policy, tools=tools, groups=groups, workspaces=workspaces)
