"""notes_digest's answer quotes the notes it read with their files and says where the digest went (issue 12): when
the model calls the tools right, the facts of every dataset case are in the answer, in the notes' own words."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from engine.answers import problems
from engine.flow.validate import load_flow
from engine.interpreter.setup import kernel_for
from engine.interpreter.walk import RunOutcome, run_flow
from engine.kernel.storage import Storage
from engine.llm.scripted import ScriptedBackend
from tests.conftest import FLOWS

EVALS = FLOWS / "evals"


def run_on(files: dict[str, str], inputs: dict[str, Any], digest: str, tmp_path: Path) -> RunOutcome:
    """A run over `files` that reads each file named in `inputs` and whose model writes `digest` to digest.md."""
    checked = load_flow(FLOWS / "notes_digest.yaml")
    write = {"tool": "write_file", "arguments": {"path": "digest.md", "content": digest}}
    backend = ScriptedBackend.from_responses([{"key": "write_digest", "text": json.dumps(write)}])
    kernel = kernel_for([checked], backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"))
    workspace = tmp_path / "notes"
    workspace.mkdir()
    for name, text in files.items():
        (workspace / name).write_text(text, encoding="utf-8")
    return asyncio.run(run_flow(kernel, checked.compiled, inputs, file="notes_digest.yaml", workspace=workspace))


def dataset() -> list[Any]:
    lines = (EVALS / "notes_digest.jsonl").read_text(encoding="utf-8").splitlines()
    return [pytest.param(case, id=case["name"]) for case in map(json.loads, lines)]


@pytest.mark.parametrize("case", dataset())
def test_the_facts_of_the_notes_and_where_the_digest_is_are_in_the_answer(case: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    outcome = run_on(case["files"], case["inputs"], "# Digest\n", tmp_path)
    assert outcome.status == "finished", outcome.error
    assert problems({"contains": case["expect"]["contains"]}, outcome.answer, ignore_case=True) == []
    for name in case["inputs"]["files"]:
        assert f"{name}: {case['files'][name].strip()[:40]}" in outcome.answer  # each quoted after its file


def test_the_answer_names_the_file_write_file_wrote(tmp_path: Path) -> None:
    outcome = run_on({"a.md": "Bees visit clover."}, {"topic": "bees", "files": ["a.md"]}, "# Bees\n", tmp_path)
    assert outcome.answer.startswith("The digest on bees is saved as digest.md.")
    assert (tmp_path / "notes" / "digest.md").read_text(encoding="utf-8") == "# Bees\n"


def test_a_long_note_is_cut_in_the_answer_but_not_in_what_was_read(tmp_path: Path) -> None:
    long = "Clover " * 200
    outcome = run_on({"a.md": long}, {"topic": "clover", "files": ["a.md"]}, "# Clover\n", tmp_path)
    assert len(outcome.answer) < 600 < len(long)
