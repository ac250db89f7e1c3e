"""Tool manifests (`<name>.tool.yaml`, and `<server>.mcp.yaml` for an MCP server's tools: engine.flow.servers):
reading and checking them, and finding them in directories."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.loader import load_file
from engine.flow.schema import schema, schema_diagnostics
from engine.kernel.mcp import McpServer
from engine.resources import data_dir

SUFFIXES = (".tool.yaml", ".tool.yml", ".mcp.yaml", ".mcp.yml")


@dataclass(frozen=True)
class ToolManifest:
    """A tool: what it does, its arguments' JSON Schema, the callable, and how it may be called."""

    name: str
    description: str
    parameters: dict[str, Any]
    entry: str
    timeout: float
    concurrency: int
    idempotent: bool
    file: str
    position: tuple[int, int]  # of its name in `file`
    provider: str = ""  # who serves what it reaches
    variables: tuple[str, ...] = ()  # the environment variables it reads
    hosts: tuple[str, ...] = ()  # the hosts it may reach (engine.kernel.network)
    server: McpServer | None = None  # the MCP server whose tool it is (then it has no entry)


@dataclass
class ToolSet:
    """Manifests by tool name, and the problems found reading them."""

    tools: dict[str, ToolManifest] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def is_manifest(path: Path) -> bool:
    """Whether `path` is named like a tool manifest."""
    return path.name.endswith(SUFFIXES)


def read_manifest(path: Path, file: str | None = None) -> tuple[list[ToolManifest], list[Diagnostic]]:
    """The tools of the manifest at `path` (a tool's, or an MCP server's) and its diagnostics."""
    if path.name.endswith((".mcp.yaml", ".mcp.yml")):
        from engine.flow.servers import read_server  # not at the top: it builds this module's ToolManifests

        return read_server(path, file)
    manifest, problems = _read_tool(path, file)
    return [manifest] if manifest else [], problems


def _read_tool(path: Path, file: str | None = None) -> tuple[ToolManifest | None, list[Diagnostic]]:
    doc = load_file(path, file)
    if doc.diagnostics:
        return None, doc.diagnostics
    problems = schema_diagnostics(doc, "tool")
    if problems:
        return None, problems
    code = doc.data["entry"].partition(":")[0]
    if code.endswith(".py") and not (path.parent / code).is_file():  # checked, never imported: validate runs no code
        message = f"entry names {code}, which is not beside this manifest: add it or fix `entry`"
        return None, [diagnostic("FR205", message, doc.file, doc.position(("entry",)))]
    defaults = {k: v["default"] for k, v in schema("tool")["properties"].items() if "default" in v}
    data = {**defaults, **doc.data}
    manifest = ToolManifest(
        name=data["name"],
        description=data["description"],
        parameters=data["parameters"],
        entry=data["entry"],
        timeout=data["timeout"],
        concurrency=data["concurrency"],
        idempotent=data["idempotent"],
        file=doc.file,
        position=doc.position(("name",)),
        provider=data.get("provider", ""),
        variables=tuple(data["variables"]),
        hosts=tuple(data["hosts"]),
    )
    return manifest, []


def manifest_files(directory: Path) -> list[Path]:
    """The manifests in `directory` and below, in a stable order."""
    return sorted(p for suffix in SUFFIXES for p in directory.rglob(f"*{suffix}") if p.is_file())


def load_tools(paths: Iterable[Path], *, bundled: bool = True, known: Iterable[Path] = ()) -> ToolSet:
    """The tools of the manifests at `paths` (files or directories), over the bundled tools/ when `bundled`.

    A manifest of the user's may shadow a bundled tool of the same name; two of the user's with one name are an error.
    The `known` manifests (found, not asked for) add their tools between the two; their problems are not reported
    here but where they are validated themselves, and one that has problems adds no tool.
    """
    found = ToolSet()
    if bundled:
        for path in manifest_files(data_dir("tools")):
            manifests, problems = read_manifest(path)
            found.diagnostics.extend(problems)
            found.tools.update((m.name, m) for m in manifests)
    given: dict[Path, Path] = {}  # each manifest once, however many of `paths` name it
    for path in (p for named in paths for p in (manifest_files(named) if named.is_dir() else [named])):
        given.setdefault(path.resolve(), path)
    for path in known:
        if path.resolve() not in given:
            manifests, problems = read_manifest(path)
            if not problems:
                found.tools.update((m.name, m) for m in manifests)
    own: dict[str, ToolManifest] = {}
    for path in given.values():
        manifests, problems = read_manifest(path)
        found.diagnostics.extend(problems)
        for manifest in manifests:
            if manifest.name in own:
                found.diagnostics.append(_duplicate(manifest, own[manifest.name]))
            own[manifest.name] = manifest
    found.tools.update(own)
    return found


def _duplicate(manifest: ToolManifest, first: ToolManifest) -> Diagnostic:
    return diagnostic(
        "FR204",
        f"tool {manifest.name!r} is already defined in {first.file}:{first.position[0]}: rename one of them",
        manifest.file,
        manifest.position,
    )
