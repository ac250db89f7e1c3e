"""MCP server manifests (`<server>.mcp.yaml`): the tools a flow may call from an MCP server, read from the listing
of the server's tools that `flowrun tools refresh` stores beside the manifest (`<server>.mcp-tools.json`), so that
validating stays offline and fast and a reviewer sees in a diff when a server's tools change."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema_rs

from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.loader import Document, load_file
from engine.flow.manifest import ToolManifest
from engine.flow.schema import schema, schema_diagnostics, suggest
from engine.json_schema import compile_schema
from engine.kernel.mcp import McpServer, list_tools

SUFFIXES = (".mcp.yaml", ".mcp.yml")
LISTING = ".mcp-tools.json"
FORMAT = 1  # of the listing file


def listing_path(manifest: Path) -> Path:
    """Where the listing of the tools of the server `manifest` names is stored: beside it."""
    stem = next(manifest.name[:-len(s)] for s in SUFFIXES if manifest.name.endswith(s))
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
        listing = json.loads(listing_file.read_text(encoding="utf-8"))
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
            problems.append(diagnostic("FR206", f"server {server.name} lists no tool {name!r}{suggest(name, listed)}"
                                                f" (it lists: {', '.join(listed) or 'none'}): fix the name, or "
                                                f"`flowrun tools refresh {path}` if it has one now",
                                       doc.file, position))
            continue
        parameters = tool.get("inputSchema")
        try:
            compile_schema(parameters)
            if not isinstance(parameters, dict) or parameters.get("type") != "object":
                raise ValueError("not an object's schema")
        except (jsonschema_rs.ValidationError, ValueError, TypeError) as exc:
            problems.append(diagnostic("FR206", f"tool {name!r} of server {server.name} has an inputSchema flowrun "
                                                f"cannot check arguments with ({exc}): leave it out of `tools`",
                                       doc.file, position))
            continue
        hints = tool.get("annotations") or {}
        tools.append(ToolManifest(
            name=name,
            description=str(tool.get("description") or tool.get("title") or name).strip(),
            parameters=parameters,
            entry="",
            timeout=data["timeout"],
            concurrency=data["concurrency"],
            idempotent=data.get("idempotent", bool(hints.get("readOnlyHint") or hints.get("idempotentHint"))),
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
    listing_path(path).write_text(json.dumps(listing, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return [t["name"] for t in tools], []


def server_manifests(paths: Iterable[Path]) -> list[Path]:
    """The MCP server manifests at `paths`: files as given, and those below directories."""
    return [p for path in paths
            for p in (sorted(f for s in SUFFIXES for f in path.rglob(f"*{s}")) if path.is_dir() else [path])]


def _server(path: Path, file: str | None = None) -> tuple[Document, McpServer | None]:
    """The manifest's document and the server it names (None when it has problems, then in the document's)."""
    doc = load_file(path, file)
    if not doc.diagnostics:
        doc.diagnostics.extend(schema_diagnostics(doc, "mcp"))
    if doc.diagnostics:
        return doc, None
    data = doc.data
    return doc, McpServer(data["name"], tuple(data.get("command", ())), data.get("url", ""),
                          tuple(data.get("variables", ())))


def _defaults() -> dict[str, Any]:
    return {k: v["default"] for k, v in schema("mcp")["properties"].items() if "default" in v}


def _reached(source: Any) -> str:
    if isinstance(source, dict) and "url" in source:
        return str(source["url"])
    if isinstance(source, dict) and isinstance(source.get("command"), list):
        return "`" + " ".join(map(str, source["command"])) + "`"
    return "another server"
