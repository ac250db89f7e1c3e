"""Property test: however an example flow is mangled, validation never raises and locates every diagnostic."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.flow.diagnostics import RULES
from engine.flow.validate import check_flow_text
from tests.conftest import FLOWS

TEXTS = {p.name: p.read_text() for p in sorted(FLOWS.glob("*.yaml"))}
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
    lines = text.count("\n") + 2
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
