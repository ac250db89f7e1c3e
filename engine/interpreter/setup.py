"""Putting a run's machinery together: its backend (a model, or a cassette) and a kernel with its flows' tools."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

from engine.flow.hosts import read_hosts
from engine.flow.loader import load_file
from engine.flow.validate import CheckedFlow
from engine.kernel.kernel import Kernel
from engine.kernel.scheduler import Policy
from engine.kernel.slots import SlotLeases
from engine.kernel.storage import Storage
from engine.kernel.tools import tool_from_manifest
from engine.llm.auto import open_backend
from engine.llm.base import Backend
from engine.llm.models import CATALOG
from engine.llm.pool import PoolBackend
from engine.llm.scripted import CassetteError, ScriptedBackend


def kernel_for(flows: Iterable[CheckedFlow], backend: Backend, storage: Storage, *, policy: Policy = Policy.FIFO,
               workspaces: Path | None = None) -> Kernel:
    """A kernel on `backend` and `storage` with the tools `flows` use, and the flows they call (a valid flow names
    only tools it knows)."""
    tools = {name: tool_from_manifest(checked.tools[name]) for checked in flows
             for flow in checked.compiled.flows()
             for name in flow.tools}
    return Kernel(backend, storage, policy=policy, tools=tools.values(), workspaces=workspaces)


def read_cassette(path: Path) -> ScriptedBackend:
    """The scripted backend answering from the cassette file at `path` (read by the flow loader's YAML rules).

    A cassette is a mapping with `responses` (see engine.llm.scripted) and optionally `token_delay` in seconds.
    """
    doc = load_file(path)
    if doc.diagnostics:
        first = doc.diagnostics[0]
        raise CassetteError(f"{first.file}:{first.line}:{first.column}: {first.message}")
    data = doc.data if isinstance(doc.data, dict) else {}
    if "responses" not in data:
        raise CassetteError(f"{path}: a cassette is a mapping with a `responses` list")
    delay = data.get("token_delay", 0)
    if not isinstance(delay, int | float) or not 0 <= delay < math.inf:  # nan fails the comparison too
        line, column = doc.position(("token_delay",))
        raise CassetteError(f"{path}:{line}:{column}: `token_delay` is a finite number of seconds, 0 or more")
    try:
        return ScriptedBackend.from_responses(data["responses"], token_delay=float(delay))
    except CassetteError as exc:
        line, column = doc.position(("responses", *exc.at))
        raise CassetteError(f"{path}:{line}:{column}: {exc}") from None


def open_backend_for(kind: str, model: str, cassette: Path | None, *, slots: int | None = None,
                     say: Callable[[str], None] = lambda _: None, answered: list[str] | None = None) -> Backend:
    """The backend `kind` (auto, ollama, embedded or scripted, which answers from `cassette`) for `model`.

    `answered`: the request keys a resumed run already got answers for, which a cassette does not give again.
    """
    if kind == "scripted":
        if cassette is None:
            raise CassetteError("--backend scripted answers from a cassette: give it with --cassette FILE")
        backend = read_cassette(cassette)
        backend.skip(answered or [])
        backend.slots = slots or backend.slots
        return backend
    return open_backend(kind, model, slots=slots, say=say)


def pool_backend(path: Path, model: str, storage: Storage) -> PoolBackend:
    """Model `model` (a catalog name, or an Ollama model's) on the hosts the hosts file at `path` lists, their
    slots leased through `storage`'s database (engine.kernel.slots)."""
    found = read_hosts(path)
    leases = SlotLeases(storage, found.hosts, lease=found.lease)
    return PoolBackend(CATALOG[model].ollama if model in CATALOG else model, found.hosts, leases,
                       retry_after=found.retry_after)
