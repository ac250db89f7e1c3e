"""Shared helpers: where the repository's flows and fixtures are, and the expectations fixtures carry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.flow.manifest import ToolManifest, load_tools

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "flows"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
INVALID = FIXTURES / "invalid"

_MARKER = re.compile(r"#\s*<-\s*(.*)$")


def expected_diagnostics(path: Path) -> set[tuple[int, str]]:
    """(line, code) for each `# <- FRxxx` marker in a fixture: the diagnostics it must produce, and only those."""
    found = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        marker = _MARKER.search(line)
        if marker:
            found.update((number, code) for code in re.findall(r"FR\d{3}", marker.group(1)))
    return found


@pytest.fixture(scope="session")
def tools() -> dict[str, ToolManifest]:
    """The bundled tools."""
    loaded = load_tools([])
    assert not loaded.diagnostics
    return loaded.tools
