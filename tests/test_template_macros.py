"""A macro a template defines is a name it may use: validation does not report it, and a run renders it."""

from __future__ import annotations

from pathlib import Path

from tests.test_interpreter import run
from tests.test_step_data import diagnostics, flow_file

FLOW = """\
flowrun: 1
name: Macro
inputs:
  words: {type: string}
steps:
  answer:
    kind: terminal
    output: >-
      {%- macro shout(word) -%}{{ word | upper }}!{%- endmacro -%}
      {{ inputs.words.split() | map('trim') | map('string') | join(' ') }}: {{ shout(inputs.words) }} {{ shout2 }}
"""


def test_a_macro_is_a_known_name_and_an_unknown_one_is_still_reported(tools) -> None:
    assert diagnostics(FLOW, tools) == {(8, 13, "FR302")}  # shout2 only


def test_a_macro_renders(tmp_path: Path) -> None:
    outcome, _ = run(flow_file(tmp_path, FLOW.replace(" {{ shout2 }}", "")), [], {"words": "go on"}, tmp_path)
    assert outcome.status == "finished", outcome.error
    assert outcome.answer == "go on: GO ON!"
