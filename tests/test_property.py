"""Property test: however an example flow is mangled, validation never raises and locates every diagnostic."""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.flow.diagnostics import RULES
from engine.flow.validate import check_flow_text
from tests.conftest import FLOW_FILES

TEXTS = {p.name: p.read_text() for p in FLOW_FILES}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
odd_strings = st.sampled_from([
    "x" * 200_000, "{{ steps.", "{% for %}", "{{ inputs.nope }}", "", " ", "\u00e9\u2603\U0001f600", "a: b", "- [",
    "{{ visits.ghost }}", "yes", "null", "[[[[", "&a *a",
])

YAML_PIECES = st.sampled_from([":", "-", "[", "{", "'", '"', "\t", "  ", "\n", "*a", "&", "!", "#", "%", "@", "`", "|",
                               ">", "? ", "\x00", "\ufeff"])


def assert_sane(text: str, name: str, tools) -> None:
    checked = check_flow_text(text, name, tools)
    lines = len(re.split("\r\n|[\n\r\x85\u2028\u2029]", text)) + 1  # YAML's line breaks, NEL included
    for d in checked.diagnostics:
        assert d.code in RULES
        assert d.file == name
        assert 1 <= d.line <= lines and d.column >= 1
        assert d.message


def paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside `data`."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += paths(value, (*prefix, i))
    return found


def replace(data: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


@SETTINGS
@given(name=st.sampled_from(sorted(TEXTS)), data=st.data())
def test_deleting_keys_or_changing_values(name: str, data, tools) -> None:
    flow = yaml.safe_load(TEXTS[name])
    for _ in range(data.draw(st.integers(1, 4))):
        candidates = paths(flow)[1:]
        if not candidates:
            break
        path = data.draw(st.sampled_from(candidates))
        action = data.draw(st.sampled_from(["delete", "value", "string"]))
        if action == "delete":
            flow = replace(flow, path, None, delete=True)
        else:
            flow = replace(flow, path, data.draw(json_values if action == "value" else odd_strings))
    assert_sane(yaml.safe_dump(flow, sort_keys=False), name, tools)


@SETTINGS
@given(name=st.sampled_from(sorted(TEXTS)), data=st.data())
def test_retargeting_edges(name: str, data, tools) -> None:
    flow = yaml.safe_load(TEXTS[name])
    ids = list(flow["steps"])
    targets = st.sampled_from(ids) | st.text(max_size=12) | st.sampled_from(["", "start", "steps"])
    for step in flow["steps"].values():
        if "next" in step and data.draw(st.booleans()):
            step["next"] = data.draw(targets)
        for label in list(step.get("branches", {})):
            if data.draw(st.booleans()):
                step["branches"][label] = data.draw(targets)
    if data.draw(st.booleans()):
        flow["start"] = data.draw(targets)
    assert_sane(yaml.safe_dump(flow, sort_keys=False), name, tools)


@SETTINGS
@given(name=st.sampled_from(sorted(TEXTS)), data=st.data())
def test_corrupting_yaml_text(name: str, data, tools) -> None:
    text = TEXTS[name]
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["insert", "delete", "truncate"]))
        if action == "insert":
            text = text[:at] + data.draw(YAML_PIECES) + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + data.draw(st.integers(1, 40)):]
        else:
            text = text[:at]
    assert_sane(text, name, tools)


@SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text(text: str, tools) -> None:
    assert_sane(text, "random.yaml", tools)



atoms = st.sampled_from([
    "inputs.days", "visits.a", "steps.a.output.n", "steps['a'].output", "inputs.files[0]", "x", "x.if", "loop.index",
    "range", "true", "None", "1", "0", "10.5", "'yes'", '"no"', "'a b'", "''",
    # outside the fast reader's subset, so it must give up on them:
    "007", "1e3", "1_0", "x.0", "x()", "x|join(',')", "x|a.b", "'a' 'b'", "-1", "not", "if", "x is defined", "[1]",
    "{'a': 1}", "x[y]", "é", "'\\n'", "a, b", "(x).y", "x ~ y", "x * 2",
])
expressions = st.recursive(
    atoms,
    lambda e: (
        st.builds(lambda a, op, b: f"{a} {op} {b}", e, st.sampled_from(["==", "!=", "<", ">=", "and", "or", "+", "-",
                                                                           "in", "not in"]), e)
        | st.builds(lambda a, b, c: f"{a} if {b} else {c}", e, e, e)
        | st.builds(lambda a, b: f"{a} if {b}", e, e)
        | st.builds(lambda a: f"not {a}", e)
        | st.builds(lambda a: f"({a})", e)
        | st.builds(lambda a, f: f"{a} | {f}", e, st.sampled_from(["length", "upper", "nope"]))
    ),
    max_leaves=6,
)
holes = st.builds(lambda left, e, right: "{{" + left + e + right + "}}", st.sampled_from(["", " ", "  ", "-", "\n"]),
                  expressions, st.sampled_from(["", " ", "-", "\n"]))
template_texts = st.lists(holes | st.sampled_from(["text ", " ", "\n", "{", "}", "{%", "{#", "}}", "{{"]),
                          min_size=1, max_size=4).map("".join)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=template_texts)
def test_fast_template_reading_agrees_with_the_jinja_parser(text: str) -> None:
    from engine.flow import templates

    fast = templates._Reader.facts(text) if templates.is_template(text) else None
    if fast is None:
        return
    try:
        parsed = templates._walk(templates.environment.parse(text))
    except Exception as exc:  # the fast reader must never accept what the parser refuses
        raise AssertionError(f"fast reader accepted {text!r}, which Jinja2 refuses: {exc}") from exc
    assert (fast.free_names, sorted(fast.references), sorted(fast.unsupported), fast.outcomes) == (
        parsed.free_names, sorted(parsed.references), sorted(parsed.unsupported), parsed.outcomes), text


def test_fast_reader_covers_the_common_shapes() -> None:
    from engine.flow import templates

    for text in ["Plan {{ inputs.query }} for {{ steps.parse.output.days }} days",
                 "{{ 'yes' if visits.a >= steps.p.output.days and not visits.b else 'no' }}",
                 "{{ 'yes' if visits.solve < steps.plan.output.items | length else 'no' }}"]:
        assert templates._Reader.facts(text) is not None, text


CONTEXT = {
    "inputs": {"days": 3, "files": ["a.md", "b.md"], "ratio": 2.5, "flag": True, "none": None, "nested": {"k": "v"}},
    "steps": {"a": {"output": {"n": 1, "items": [1, 2], "keys": "k", "text": "{{ not markup }}"}}},
    "visits": {"a": 2, "b": 0},
}
plain_paths = st.sampled_from([
    "inputs.days", "inputs.files[1]", "inputs.files[2]", "inputs.ratio", "inputs.flag", "inputs.none",
    "inputs.nested", "inputs.nested.k", "inputs.missing", "steps.a.output.n", "steps.a.output.items",
    "steps.a.output.items[0]", "steps.a.output.keys", "steps.a.output.text", "visits.a", "visits.b", "x",
    "inputs.files",
])
render_texts = st.lists(
    st.builds(lambda left, path, right: "{{" + left + path + right + "}}", st.sampled_from(["", " ", "  "]),
              plain_paths, st.sampled_from(["", " "]))
    | holes | st.sampled_from(["text ", " ", "\n", "{", "}", "{%", "{# c #}", "}}", "é"]),
    min_size=1, max_size=4).map("".join)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=render_texts)
def test_direct_rendering_agrees_with_jinja(text: str) -> None:
    from engine.flow import templates

    def outcome(render):
        try:
            return "ok", render()
        except Exception as exc:
            return "error", type(exc).__name__

    jinja = outcome(lambda: templates.environment.from_string(text).render(CONTEXT))
    assert outcome(lambda: templates.render(text, CONTEXT)) == jinja, text


def test_direct_rendering_covers_plain_instructions() -> None:
    from engine.flow import templates

    text = "Plan {{ inputs.days }} days from {{inputs.files[0]}}."
    assert templates._plain(text, CONTEXT) == "Plan 3 days from a.md."
    assert templates._plain("{{ steps.a.output.keys }}", CONTEXT) is None  # a dict attribute: Jinja2 decides
