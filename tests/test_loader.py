"""The YAML loader: YAML 1.2 values, positions for keys and values, and problems as diagnostics."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from engine.flow.loader import load_file, load_yaml


def test_plain_scalars_follow_yaml_1_2_core_schema() -> None:
    text = "a: yes\nb: no\nc: on\nd: true\ne: 0x1f\nf: 1.5e3\ng: .inf\nh: ~\ni: '3'\nj: !!str 4\nk: 012\n"
    doc = load_yaml(text, "f")
    assert doc.data == {"a": "yes", "b": "no", "c": "on", "d": True, "e": 31, "f": 1500.0, "g": math.inf,
                        "h": None, "i": "3", "j": "4", "k": 12}
    assert not doc.diagnostics


def test_mapping_keys_are_strings() -> None:
    doc = load_yaml("branches: {yes: a, 1: b, true: c, null: d}\n", "f")
    assert list(doc.data["branches"]) == ["yes", "1", "true", "null"]


def test_positions_of_keys_and_values() -> None:
    doc = load_yaml("steps:\n  first:\n    next: second\n    tools: [a, b]\n", "f")
    assert doc.position(("steps", "first"), key=True) == (2, 3)
    assert doc.position(("steps", "first", "next")) == (3, 11)
    assert doc.position(("steps", "first", "tools", 1)) == (4, 16)
    assert doc.position(("steps", "first", "tools", 1), key=True) == (4, 5)  # list items: the list's key
    assert doc.position(("steps", "first", "missing", "deeper")) == (3, 5)  # the deepest part that exists
    assert doc.position(("steps", "first", "missing"), key=True) == (2, 3)


def test_duplicate_keys_are_errors_at_the_second_key() -> None:
    doc = load_yaml("a: 1\nb:\n  c: 1\n  c: 2\n", "dup.yaml")
    (problem,) = doc.diagnostics
    assert (problem.code, problem.line, problem.column, problem.file) == ("FR002", 4, 3, "dup.yaml")
    assert "line 3" in problem.message


def test_merge_keys_fill_in_without_overriding() -> None:
    doc = load_yaml("base: &b {kind: process, next: x}\nstep:\n  <<: *b\n  next: y\n", "f")
    assert doc.data["step"] == {"kind": "process", "next": "y"}
    assert not doc.diagnostics
    assert doc.position(("step", "next")) == (4, 9)  # the written value, not the merged one
    assert doc.position(("step", "kind")) == (1, 17)  # a merged value is where it was written


def test_positions_survive_a_mapping_that_merges_itself() -> None:
    doc = load_yaml("a: &a {x: 1, <<: *a}\n", "f")
    assert doc.position(("a", "nope")) == (1, 4)


def test_syntax_error_is_located_not_raised() -> None:
    doc = load_yaml("a: 1\nb: [1, 2\nc: 3\n", "bad.yaml")
    (problem,) = doc.diagnostics
    assert problem.code == "FR001" and problem.line == 3
    assert doc.data is None


def test_several_documents_are_a_syntax_error() -> None:
    assert [d.code for d in load_yaml("a: 1\n---\nb: 2\n", "f").diagnostics] == ["FR001"]


def test_recursive_alias_and_alias_bomb_are_refused() -> None:
    assert [d.code for d in load_yaml("a: &a [*a]\n", "f").diagnostics] == ["FR004"]
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
    )
    doc = load_yaml(bomb, "bomb.yaml")
    assert [d.code for d in doc.diagnostics] == ["FR004"]
    assert doc.data is None


def test_unknown_tags_are_reported() -> None:
    doc = load_yaml("a: !!python/object:os.system x\nb: !custom [1]\n", "f")
    assert [(d.code, d.line) for d in doc.diagnostics] == [("FR004", 1), ("FR004", 2)]


DEEP_FLOW = "a: " + "[" * 3000 + "]" * 3000 + "\n"
DEEP_BLOCK = "a:\n" + "".join("  " * i + "- \n" for i in range(3000))


@pytest.mark.parametrize("text", [DEEP_FLOW, DEEP_BLOCK], ids=["flow", "block"])
def test_deep_nesting_is_a_diagnostic(text: str) -> None:
    # libyaml >= 0.2.6 refuses the depth itself, older ones leave it to the builder: FR004 either way, placed inside
    doc = load_yaml(text, "deep.yaml")
    assert [d.code for d in doc.diagnostics] == ["FR004"]
    assert (doc.diagnostics[0].line, doc.diagnostics[0].column) > (1, 3)


def test_deep_nesting_without_libyaml() -> None:
    # PyYAML built without libyaml composes in Python, where the depth overflows the stack instead
    code = (
        "import sys; sys.modules['yaml.cyaml'] = None\n"
        "from engine.flow import loader\n"
        "assert loader._Parser.__module__ == 'engine.flow.loader'\n"
        f"doc = loader.load_yaml({DEEP_FLOW!r}, 'deep.yaml')\n"
        "print([(d.code, d.line) for d in doc.diagnostics])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[('FR004', 1)]"


def test_unreadable_files_are_diagnostics(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert [d.code for d in load_file(binary).diagnostics] == ["FR001"]
    assert [d.code for d in load_file(tmp_path / "missing.yaml").diagnostics] == ["FR001"]


def test_empty_document_has_no_data() -> None:
    doc = load_yaml("# only a comment\n", "f")
    assert doc.data is None and not doc.diagnostics
