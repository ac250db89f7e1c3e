"""Hostile and careless templates (issue 11, items 3, 12 and 13): a template bomb is stopped by the sandbox or
reported by `flowrun validate` at file:line:col, never a hang or a traceback; validation stays fast on any text."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from jinja2.sandbox import SecurityError

from engine.cli import main
from engine.flow import sandbox
from engine.flow.sandbox import TemplateLimit
from engine.flow.templates import render
from engine.flow.validate import check_flow_text
from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow, StepRow

# `begin` decides without a model, so a run that fails at `work` has one step to keep.
FLOW = """\
flowrun: 1
name: Hostile
inputs:
  n: {type: integer, default: 3}
  s: {type: string, default: x}
limits: {max_steps: 10}
steps:
  begin:
    kind: decision
    question: Go on?
    decide: go
    branches: {go: work, stop: done}
  work:
    kind: process
    instruction: "INSTRUCTION"
    next: done
  done:
    kind: terminal
    instruction: Say what was done.
"""
WHERE = (15, 18)  # of the instruction's value
ANSWERS = "responses: [{key: work, text: worked}, {key: done, text: all done}]\n"


def flow_with(instruction: str) -> str:
    return FLOW.replace("INSTRUCTION", instruction)


def problems(instruction: str, tools) -> list[tuple[str, int, int]]:
    checked = check_flow_text(flow_with(instruction), "hostile.yaml", tools)
    return [(d.code, d.line, d.column) for d in checked.diagnostics]


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def run(tmp_path: Path, flow: Path, *inputs: str) -> Result:
    answers = tmp_path / "answers.cassette.yaml"
    answers.write_text(ANSWERS)
    pairs = [part for pair in inputs for part in ("-i", pair)]
    return cli("run", str(flow), *pairs, "--backend", "scripted", "--cassette", str(answers),
               "--db", str(tmp_path / "runs.db"))


def stored(tmp_path: Path, table: type) -> list:
    return Storage(f"sqlite:///{tmp_path / 'runs.db'}").rows(table)


# Item 3: bombs whose values are in the template itself are found by validate, with their own code.
@pytest.mark.parametrize("bomb", [
    "{{ 10 ** (10 ** 9) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10 ** 10 }}",
    "{{ ['x' * 1000000] * 1000000 }}",  # a list's size counts the characters it holds
    "{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}",  # each output is within bounds, all is not
])
def test_bombs_seen_before_a_run_are_reported_by_validate(bomb: str, tools, tmp_path: Path) -> None:
    assert problems(bomb, tools) == [("FR304", *WHERE)]
    flow = tmp_path / "hostile.yaml"
    flow.write_text(flow_with(bomb))
    result = cli("validate", str(flow))
    assert result.exit_code == 1 and f"hostile.yaml:{WHERE[0]}:{WHERE[1]}: error FR304 template-limit" in result.stdout


# Item 3: bombs whose size comes from the data are stopped by the sandbox, before the work is done.
@pytest.mark.parametrize(("bomb", "inputs", "bound"), [
    ("{{ 10 ** inputs.n }}", {"n": 10 ** 9}, "bits"),
    ("{{ inputs.s * inputs.n }}", {"s": "x", "n": 10 ** 10}, "repeating"),
    ("{% for i in range(inputs.n) %}{% for j in range(inputs.n) %}{% endfor %}{% endfor %}", {"n": 100_000},
     "loop iterations"),
    ("{% for i in range(inputs.n) %}{{ inputs.s }}{% endfor %}", {"n": 100_000, "s": "x" * 1000}, "text"),
    ("{{ inputs.s|center(inputs.n) }}", {"s": "x", "n": 10 ** 10}, "center"),
    ("{{ inputs.s.ljust(inputs.n) }}", {"s": "x", "n": 10 ** 10}, "ljust"),
    ("{{ '%0*d' % (inputs.n, 1) }}", {"n": 10 ** 10}, "format width"),
    ("{{ inputs.s|replace('', inputs.s * 1000) }}", {"s": "x" * 1000}, "replace"),
    ("{{ inputs.s|wordwrap(1, wrapstring=inputs.s) }}", {"s": "x y " * 1000}, "wordwrap"),
    ("{{ ([inputs.s] * 90)|map('string')|join(inputs.s) }}", {"s": "x" * 10_000}, "join"),
    ("{{ inputs.s.join(([inputs.s] * 90)|map('string')) }}", {"s": "x" * 10_000}, "join"),
    ("{% set ns = namespace(s=inputs.s) %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     {"s": "x"}, "`~`"),
    ("{% set ns = namespace(n=inputs.n) %}{% for i in range(60) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
     {"n": 3}, "bits"),
    ("{% set text %}{% for i in range(inputs.n) %}{{ inputs.s }}{% endfor %}{% endset %}",
     {"n": 100_000, "s": "x" * 100}, "text"),
    # Review of the sandbox: values small to hold but huge to spell out, bytes, joins of any iterable, text
    # counted as it is made. Each of these took gigabytes or one long C call before.
    ("{{ [inputs.s * 999999] * inputs.n }}", {"s": "x", "n": 1_000_000}, "repeating a list"),
    ("{{ ([inputs.s * 999999] * 1500)|tojson }}", {"s": "x"}, "repeating a list"),
    ("{{ ([inputs.s * 999999] * 1500)|string }}", {"s": "x"}, "repeating a list"),
    ("{{ ([10 ** inputs.n] * 1000000)|join }}", {"n": 4000}, "repeating a list"),
    ("{% set a = [inputs.s] * 500000 %}{{ [a, a, a]|string }}", {"s": "x"}, "a list, tuple or dict"),
    ("{% set ns = namespace(s=inputs.s * 999000) %}{{ ([ns] * 1000)|string }}", {"s": "x"}, "repeating a list"),
    ("{{ (inputs.s.encode() * inputs.n)|length }}", {"s": "x", "n": 2 * 10 ** 9}, "repeating a text"),
    ("{{ inputs.s.encode().ljust(inputs.n) }}", {"s": "x", "n": 3 * 10 ** 9}, "bytes.ljust"),
    ("{{ ('%' ~ inputs.n ~ 'd').encode() % 1 }}", {"n": 3 * 10 ** 9}, "format width"),
    ("{{ (inputs.s * 1000000).join(inputs.s * 1500) }}", {"s": "y"}, "str.join"),
    ("{{ (inputs.s * 1000000)|join(inputs.s * 1000000) }}", {"s": "y"}, "filter `join`"),
    ("{{ range(1000)|map('center', 999000)|join }}", {}, "items read"),
    ("{{ (inputs.s * 1000000).translate({97: inputs.s * 2000}) }}", {"s": "a"}, "str.translate"),
    ("{% for i in range(inputs.n) %}{{ 'x' * 1000000 }}{% endfor %}", {"n": 100_000}, "text"),
    ("{% set t %}{% for i in range(inputs.n) %}{{ 'x' * 1000000 }}{% endfor %}{% endset %}", {"n": 100_000},
     "text"),
    ("{% set ns = namespace(a=[]) %}{% for i in range(3000) %}{% set ns.a = ns.a + [(inputs.s * 999990) ~ i] %}"
     "{% endfor %}", {"s": "x"}, "`+`"),
    ("{{ ([[inputs.n]] * 300000)|sum(start=[]) }}", {"n": 1}, "filter `sum`"),  # small, but quadratic work
])
def test_bombs_that_depend_on_data_stop_the_render(bomb: str, inputs: dict, bound: str, tools) -> None:
    assert problems(bomb, tools) == []  # nothing to see before the data comes
    with pytest.raises(TemplateLimit, match=r"at most|more than") as stopped:
        render(bomb, {"inputs": inputs, "steps": {}, "visits": {}})
    assert bound in str(stopped.value)


def test_running_out_of_memory_says_so() -> None:
    class Huge:
        def __str__(self) -> str:
            raise MemoryError

    with pytest.raises(TemplateLimit, match="more memory than it may use"):
        render("{{ inputs.x }}", {"inputs": {"x": Huge()}})


def test_a_render_that_runs_too_long_is_stopped(monkeypatch) -> None:
    monkeypatch.setattr(sandbox, "MAX_SECONDS", 0.2)
    doubling = "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(inputs.n) }}"
    with pytest.raises(TemplateLimit, match=r"took more than 0\.2 s"):
        render(doubling, {"inputs": {"n": 60}})


def test_ordinary_templates_render_as_before() -> None:
    text = ("{% for f in inputs.files %}{{ loop.index }}. {{ f ~ '!' }}{{ ', ' if not loop.last }}{% endfor %} | "
            "{{ inputs.files|join('+') }} {{ '%03d'|format(inputs.n) }} {{ 'ab'|center(6) }}| {{ inputs.n ** 2 }} "
            "{{ 'ab' * 2 }} {{ '{:>4}'.format(inputs.n) }} {% set t %}{{ inputs.n + 1 }}{% endset %}{{ t }} "
            "{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m('y') }} {{ 'a-b'|replace('-', '+') }}")
    assert render(text, {"inputs": {"files": ["a.md", "b.md"], "n": 7}}) == \
        "1. a.md!, 2. b.md! | a.md+b.md 007   ab  | 49 abab    7 8 <y> a+b"


@pytest.mark.timeout(120)
def test_a_bomb_fails_the_run_quickly_and_keeps_its_steps(tmp_path: Path) -> None:
    flow = tmp_path / "hostile.yaml"
    flow.write_text(flow_with("{{ 10 ** (10 ** inputs.n) }}"))
    result = run(tmp_path, flow, "n=9")
    assert result.exit_code == 1, result.output
    assert f"hostile.yaml:{WHERE[0]}:{WHERE[1]}: step work: its instruction cannot be rendered" in result.stderr
    assert "bits" in result.stderr
    assert [s.step for s in stored(tmp_path, StepRow)] == ["begin"]
    assert [r.status for r in stored(tmp_path, RunRow)] == ["failed"]


# Item 12: templates nested too deeply are diagnostics in validate, graph and run, not a RecursionError.
@pytest.mark.parametrize("deep", [
    "{{ " + "(" * 120 + "inputs.s" + ")" * 120 + " }}",
    "{{" * 40_000,
    "{{ " + "not " * 2000 + "inputs.s }}",
    "{{ " + "inputs.s + " * 300 + "inputs.s }}",
    "{% if inputs.s %}" * 400 + "{% endif %}" * 400,
])
def test_deep_nesting_is_a_diagnostic_in_validate_graph_and_run(deep: str, tmp_path: Path) -> None:
    flow = tmp_path / "hostile.yaml"
    flow.write_text(flow_with("{{ inputs.s }}"))
    assert run(tmp_path, flow).exit_code == 0  # a run stored before
    flow.write_text(flow_with(deep))
    where = f"hostile.yaml:{WHERE[0]}:{WHERE[1]}: error FR304 template-limit"
    for result, status in ((cli("validate", str(flow)), 1), (cli("graph", str(flow)), 2), (run(tmp_path, flow), 2)):
        assert isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == status and where in result.output and "Traceback" not in result.output
    assert [r.status for r in stored(tmp_path, RunRow)] == ["finished"]


# Item 12: what the sandbox refuses at run time is a validate error.
@pytest.mark.parametrize("unsafe", [
    "{{ inputs.s.__class__ }}",
    "{{ (inputs.s|string).__class__.__mro__ }}",
    "{{ inputs['__class__'] }}",
    "{{ inputs.s.__class__.__base__.__subclasses__() }}",
    "{% set items = [1] %}{{ items.append(2) }}",
    "{{ inputs.pop('s') }}",
])
def test_what_the_sandbox_refuses_is_a_validate_error(unsafe: str, tools) -> None:
    found = problems(unsafe, tools)
    assert ("FR305", *WHERE) in found and {code for code, *_ in found} <= {"FR305", "FR302"}  # no input `pop`
    with pytest.raises(SecurityError):  # and the sandbox does refuse it
        render(unsafe, {"inputs": {"s": "x"}, "steps": {}, "visits": {}})


@pytest.mark.parametrize("fine", ["{{ inputs.s.upper() }}", "{{ steps.work.output }}",
                                  "{{ inputs.s.split(',')|join(' ') }}"])
def test_what_the_sandbox_allows_is_not_refused(fine: str, tools) -> None:
    assert problems(fine, tools) == []


# Item 13: validation time is linear in the template's size.
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("hostile", "code"), [
    ("{{ x " * 200_000, "FR301"),
    ("{{" * 500_000, "FR304"),
    ("{{ inputs.s }}{{ x " * 60_000, "FR301"),
    ("{{ inputs.s }} and " * 55_000, None),
])
def test_a_megabyte_of_template_text_validates_in_well_under_a_minute(hostile: str, code: str | None, tools) -> None:
    assert len(hostile) >= 1_000_000
    start = time.perf_counter()
    found = problems(hostile, tools)
    elapsed = time.perf_counter() - start
    assert found == ([(code, *WHERE)] if code else [])
    assert elapsed < 60, f"{elapsed:.1f} s"  # 0.1-0.5 s here, 12 s on a crowded machine; quadratic took hours
