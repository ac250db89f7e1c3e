"""The crash test's tool that is not idempotent: each call appends a line, so a repeated call shows in the file."""

from __future__ import annotations

import os
from typing import Any

from engine.kernel.tools import workspace


def append_entry(text: str) -> dict[str, Any]:
    """Append `text` as a line of ledger.txt in the run's workspace; the number of lines after."""
    path = workspace.get() / "ledger.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as ledger:
        ledger.write(text + "\n")
        ledger.flush()
        os.fsync(ledger.fileno())
    return {"entries": len(path.read_text(encoding="utf-8").splitlines())}
