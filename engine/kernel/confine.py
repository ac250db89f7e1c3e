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


def write_files(root: Path, files: dict[str, str]) -> None:
    """Write `files` (path -> text; what a test or eval case puts in its run's workspace) under `root`, each
    confined to it (a ValueError for one that leads outside; nothing is written there)."""
    for name, text in files.items():
        target = confined(root, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
