"""The flows a server offers, by name: every valid flow file under the directories it was given."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import FlowrunError
from engine.flow.diagnostics import Severity
from engine.flow.validate import CheckedFlow, discover, load_flow


class CatalogError(FlowrunError):
    """The flows cannot be served as given; the message says which file and what to do."""


@dataclass(frozen=True)
class Offered:
    """A flow the server runs: the file it came from, checked."""

    path: Path
    checked: CheckedFlow


def load_catalog(dirs: Iterable[Path], tool_paths: Iterable[Path] = ()) -> dict[str, Offered]:
    """The flows under `dirs`, by their `name`; a CatalogError if one is invalid or two share a name."""
    dirs = list(dirs)
    offered: dict[str, Offered] = {}
    for path in discover(dirs):
        checked = load_flow(path, tool_paths)
        if not checked.ok:
            first = next(d for d in checked.diagnostics if d.severity == Severity.ERROR)
            raise CatalogError(f"{first.file}:{first.line}:{first.column}: {first.message} "
                               f"(`flowrun validate {path}` lists every problem)")
        name = checked.flow.name
        if name in offered:
            raise CatalogError(f"{path} and {offered[name].path} are both flow {name!r}: a server offers flows by "
                               "name, so rename one")
        offered[name] = Offered(path, checked)
    if not offered:
        raise CatalogError(f"no flow files under {', '.join(map(str, dirs))}: give --flows a directory of flows")
    return offered
