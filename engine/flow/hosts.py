"""The model hosts file (`flowrun worker --hosts hosts.yaml`, schemas/hosts.schema.json): the Ollama servers that
workers share, each with its slots, checked like any flowrun file (every problem at file:line:col)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import FlowrunError
from engine.flow.loader import load_file
from engine.flow.schema import schema_diagnostics
from engine.llm.pool import Host


class HostsError(FlowrunError):
    """The hosts file cannot be used; the message says where and what to do."""


@dataclass(frozen=True)
class Hosts:
    """The hosts, how long a slot stays held without renewal, and how long a host that failed is left out."""

    hosts: list[Host]
    lease: float = 30.0
    retry_after: float = 30.0


def read_hosts(path: Path) -> Hosts:
    """The hosts file at `path` (a HostsError naming the first problem)."""
    doc = load_file(path)
    if not doc.diagnostics:
        doc.diagnostics.extend(schema_diagnostics(doc, "hosts"))
    if doc.diagnostics:
        first = doc.diagnostics[0]
        raise HostsError(f"{first.file}:{first.line}:{first.column}: {first.message}")
    data = doc.data
    hosts = [Host(host["url"].rstrip("/"), host["slots"]) for host in data["hosts"]]
    seen: set[str] = set()
    for n, host in enumerate(hosts):
        if host.url in seen:
            line, column = doc.position(("hosts", n, "url"))
            raise HostsError(f"{doc.file}:{line}:{column}: host {host.url} is listed twice: list each once, with all "
                             "its slots")
        seen.add(host.url)
    return Hosts(hosts, float(data.get("lease", 30)), float(data.get("retry_after", 30)))
