"""Choosing a backend: `auto` uses an Ollama server when one answers at OLLAMA_HOST, otherwise the embedded model."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

from engine.llm.base import Backend
from engine.llm.models import CATALOG, DEFAULT_MODEL, resolve
from engine.llm.ollama import OllamaBackend, host

KINDS = ("auto", "ollama", "embedded")


def ollama_answers(server: str, timeout: float = 0.5) -> bool:
    """Whether an Ollama server answers at `server`."""
    try:
        with urllib.request.urlopen(f"{server}/api/version", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def pick_kind(kind: str) -> tuple[str, str]:
    """The backend `auto` stands for, and a line saying why; other kinds as they are."""
    if kind != "auto":
        return kind, f"using the {kind} backend"
    server = host()
    if ollama_answers(server):
        return "ollama", f"using the Ollama server at {server}"
    return "embedded", f"no Ollama server at {server}: using the embedded model"


def open_backend(kind: str = "auto", model: str | None = None, *, slots: int | None = None,
                 say: Callable[[str], None] = lambda _: None) -> Backend:
    """The backend `kind` (one of KINDS) for `model`: a catalog name, an Ollama model name or a .gguf path.

    Catalog names map to the same model on Ollama (smollm2-135m -> smollm2:135m).
    """
    model = model or DEFAULT_MODEL
    kind, why = pick_kind(kind)
    say(why)
    if kind == "ollama":
        return OllamaBackend(CATALOG[model].ollama if model in CATALOG else model, slots=slots)
    from engine.llm.embedded import EmbeddedBackend  # loads llama.cpp: only when it is used

    return EmbeddedBackend(resolve(model, progress=say), slots=slots or 1)
