"""The `read_file` and `write_file` tools: text files inside the run's workspace directory, nowhere else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

from engine.kernel.confine import confined
from engine.kernel.tool_code import workspace


def _inside(path: str) -> Path:
    return confined(workspace.get(), path)


def _open(path: str, target: Path, flags: int) -> BinaryIO:
    """`target` opened with `flags`, refused when it has another hard link: the link may be planted in the
    workspace for a file outside it. The check is made on the opened file (not followed if it became a symbolic
    link), before anything is read or written."""
    fd = os.open(target, flags | os.O_NOFOLLOW, 0o644)
    file = os.fdopen(fd, "r+b" if flags & os.O_WRONLY else "rb")
    if os.fstat(fd).st_nlink > 1:
        file.close()
        raise ValueError(f"{path!r} has another hard link, which may lead outside the run's workspace: "
                         "remove it, or use another path")
    return file


def read_file(path: str) -> dict[str, Any]:
    """The text of the workspace file `path`."""
    target = _inside(path)
    if not target.is_file():
        raise ValueError(f"there is no file {path!r} in the run's workspace")
    with _open(path, target, os.O_RDONLY) as file:
        return {"path": path, "content": file.read().decode("utf-8", errors="replace")}


def write_file(path: str, content: str) -> dict[str, Any]:
    """Write `content` to the workspace file `path` (replacing it), creating folders as needed."""
    target = _inside(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8")
    with _open(path, target, os.O_WRONLY | os.O_CREAT) as file:
        file.truncate()
        file.write(data)
    return {"path": path, "bytes": len(data)}
