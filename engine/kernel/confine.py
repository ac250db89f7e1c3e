"""Paths confined to a directory: what a tool, a test case or a user names is resolved inside a run's workspace,
never outside it."""

from __future__ import annotations

from pathlib import Path


def confined(root: Path, path: str) -> Path:
    """`path` resolved under `root`; a ValueError if it leads outside (absolute, `..`, a symbolic link out)."""
    base = root.resolve()
    target = (base / path).resolve()
    if not target.is_relative_to(base):
        raise ValueError(f"{path!r} is outside the run's workspace: use a path relative to it, without ..")
    return target
