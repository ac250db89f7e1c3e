"""The `read_file` and `write_file` tools: text files inside the run's workspace directory, nowhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.kernel.confine import confined
from engine.kernel.tools import workspace


def _inside(path: str) -> Path:
    return confined(workspace.get(), path)


def read_file(path: str) -> dict[str, Any]:
    """The text of the workspace file `path`."""
    target = _inside(path)
    if not target.is_file():
        raise ValueError(f"there is no file {path!r} in the run's workspace")
    return {"path": path, "content": target.read_text(encoding="utf-8", errors="replace")}


def write_file(path: str, content: str) -> dict[str, Any]:
    """Write `content` to the workspace file `path` (replacing it), creating folders as needed."""
    target = _inside(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content, encoding="utf-8")
    return {"path": path, "bytes": len(content.encode("utf-8"))}
