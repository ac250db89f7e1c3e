"""The crash test's tool that is not idempotent: each call appends a line to the ledger, so a call done twice shows.

It writes each line with the key of its call (engine.kernel.tool_code.call_key), in the same write, and does a call
whose key is already in the ledger only once: how a tool with side effects makes itself exactly-once when flowrun
calls it again after a crash. Every time it is invoked is logged to calls.log, so a test also sees a call made again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.kernel.tool_code import call_key, workspace


def append_entry(text: str) -> dict[str, Any]:
    """Append `text` as a line of ledger.txt in the run's workspace, once per call key; the number of lines."""
    folder = workspace.get()
    folder.mkdir(parents=True, exist_ok=True)
    key = call_key.get()
    _append(folder / "calls.log", f"{key}\n")
    ledger = folder / "ledger.txt"
    lines = ledger.read_text(encoding="utf-8").splitlines() if ledger.exists() else []
    if not any(line.startswith(f"{key}\t") for line in lines):
        _append(ledger, f"{key}\t{text}\n")
        lines.append(text)
    return {"entries": len(lines)}


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
