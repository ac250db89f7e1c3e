"""MCP server manifests (`<server>.mcp.yaml`): the tools a flow may call from an MCP server, read from the listing
of the server's tools that `flowrun tools refresh` stores beside the manifest (`<server>.mcp-tools.json`), so that
validating stays offline and fast and a reviewer sees in a diff when a server's tools change."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema_rs

from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.loader import Document, load_file
from engine.flow.manifest import ToolManifest
from engine.flow.schema import schema, schema_diagnostics, suggest
from engine.json_schema import compile_schema
from engine.jsontext import parse_json
from engine.kernel.mcp import McpServer, list_tools

SUFFIXES = (".mcp.yaml", ".mcp.yml")
LISTING = ".mcp-tools.json"
FORMAT = 1  # of the listing file


def is_server(path: Path) -> bool:
    """Whether `path` is named like an MCP server manifest."""
    return path.name.endswith(SUFFIXES)


def listing_path(manifest: Path) -> Path:
    """Where the listing of the tools of the server `manifest` names is stored: beside it."""
    stem = next((manifest.name[:-len(s)] for s in SUFFIXES if manifest.name.endswith(s)), manifest.stem)
    return manifest.with_name(stem + LISTING)


def read_server(path: Path, file: str | None = None) -> tuple[list[ToolManifest], list[Diagnostic]]:
    """The tools flows may call from the server the manifest at `path` names, and the problems found."""
    doc, server = _server(path, file)
    if server is None:
        return [], doc.diagnostics
    data = {**_defaults(), **doc.data}
    listing_file = listing_path(path)
    where = doc.position(("name",))
    try:
        listing = parse_json(listing_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], [diagnostic("FR206", f"no listing of server {server.name}'s tools beside this manifest "
                                        f"({listing_file.name}): run `flowrun tools refresh {path}` where the "
                                        f"server can start, and keep the listing with the manifest", doc.file, where)]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [], [diagnostic("FR206", f"{listing_file.name} cannot be read ({exc}): run `flowrun tools refresh "
                                        f"{path}` again", doc.file, where)]
    if not isinstance(listing, dict) or listing.get("format") != FORMAT or not isinstance(listing.get("tools"), list):
        return [], [diagnostic("FR206", f"{listing_file.name} is not a listing flowrun wrote: run `flowrun tools "
                                        f"refresh {path}` again", doc.file, where)]
    if listing.get("source") != server.source():
        return [], [diagnostic("FR206", f"{listing_file.name} lists the tools of {_reached(listing.get('source'))}, "
                                        f"not of {_reached(server.source())}: run `flowrun tools refresh {path}`",
                               doc.file, where)]
    listed = {t["name"]: t for t in listing["tools"] if isinstance(t, dict) and isinstance(t.get("name"), str)}
    tools, problems = [], []
    for index, name in enumerate(data["tools"]):
        position = doc.position(("tools", index))
        tool = listed.get(name)
        if tool is None:
            names = [n for n in listed if n.isidentifier()]  # only names a flow could use, and safe to print
            problems.append(diagnostic("FR206", f"server {server.name} lists no tool {name!r}{suggest(name, names)}"
                                                f" (it lists: {', '.join(names) or 'none'}): fix the name, or "
                                                f"`flowrun tools refresh {path}` if it has one now",
                                       doc.file, position))
            continue
        problem = _unusable(tool)
        if problem:
            problems.append(diagnostic("FR206", f"tool {name!r} of server {server.name} cannot be used: {problem}: "
                                                f"leave it out of `tools`, or refresh the listing",
                                       doc.file, position))
            continue
        description = str(tool.get("description") or tool.get("title") or "").strip()
        tools.append(ToolManifest(
            name=name,
            description=description or name,
            parameters=tool["inputSchema"],
            entry="",
            timeout=data["timeout"],
            concurrency=data["concurrency"],
            idempotent=data["idempotent"],
            file=doc.file,
            position=position,
            provider=data.get("provider", f"MCP server {server.name}"),
            variables=server.variables,
            server=server,
        ))
    return tools, problems


def refresh(path: Path) -> tuple[list[str], list[Diagnostic]]:
    """Ask the server the manifest at `path` names for its tools and store the listing beside the manifest
    (listing_path); the names of the tools listed, or the manifest's problems (then nothing is asked). ToolError
    when the server cannot be reached."""
    doc, server = _server(path)
    if server is None:
        return [], doc.diagnostics
    tools = asyncio.run(list_tools(server))
    listing = {"format": FORMAT, "source": server.source(),
               "refreshed": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "tools": tools}
    target = listing_path(path)
    # written whole or not at all: a listing cut short would read as a server with fewer tools
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=target.parent, prefix=f".{target.name}.",
                                     delete=False) as written:
        written.write(json.dumps(listing, indent=1, ensure_ascii=False) + "\n")
    os.replace(written.name, target)
    return [t["name"] for t in tools], []


def server_manifests(paths: Iterable[Path]) -> list[Path]:
    """The MCP server manifests at `paths`: files named like one, and those below directories."""
    return [p for path in paths
            for p in (sorted(f for s in SUFFIXES for f in path.rglob(f"*{s}")) if path.is_dir() else [path])
            if is_server(p)]


def _server(path: Path, file: str | None = None) -> tuple[Document, McpServer | None]:
    """The manifest's document and the server it names (None when it has problems, then in the document's)."""
    doc = load_file(path, file)
    if not doc.diagnostics:
        doc.diagnostics.extend(schema_diagnostics(doc, "mcp"))
    if doc.diagnostics:
        return doc, None
    data = doc.data
    return doc, McpServer(data["name"], tuple(data.get("command", ())), data.get("url", ""),
                          tuple(data.get("variables", ())), folder=str(Path(path).parent))


def _unusable(tool: dict[str, Any]) -> str:
    """What makes a listed tool unusable (a listing is a file anyone can edit), or ''."""
    parameters = tool.get("inputSchema")
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        return "its inputSchema is not the JSON Schema of an object"
    try:
        compile_schema(parameters)
    except (jsonschema_rs.ValidationError, ValueError, TypeError) as exc:
        return f"flowrun cannot check arguments with its inputSchema ({exc})"
    if not isinstance(tool.get("description", ""), str) or not isinstance(tool.get("title", ""), str):
        return "its description is not text"
    return ""


def _defaults() -> dict[str, Any]:
    return {k: v["default"] for k, v in schema("mcp")["properties"].items() if "default" in v}


def _reached(source: Any) -> str:
    if isinstance(source, dict) and "url" in source:
        return str(source["url"])
    if isinstance(source, dict) and isinstance(source.get("command"), list):
        return "`" + " ".join(map(str, source["command"])) + "`"
    return "another server"
