"""The provable budget: the most model calls one run can make, from the graph (engine.interpreter.budget). On
random flows with loops, retries, maps and child runs, no run on a random cassette makes more; on loop-free ones,
a run on the cassette built for the costliest path makes exactly that many."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.flow.manifest import load_tools
from engine.flow.validate import CheckedFlow, check_flow_text
from engine.interpreter.budget import worst_case
from engine.interpreter.runs import LLM_KINDS
from engine.interpreter.setup import kernel_for
from engine.interpreter.walk import run_flow
from engine.kernel.kernel import at_once
from engine.kernel.retry import Backoff
from engine.kernel.storage import Storage
from engine.kernel.tables import SyscallRow
from engine.llm.scripted import ScriptedBackend
from tests.conftest import FLOWS
from tests.test_run_cli import cli

NUMBER = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
GOOD, BAD, TEXT, NOT_A_LABEL = '{"n": 1}', "no", "some text", "neither"


def _retry(tries: int) -> dict[str, Any]:
    return {"retry": {"on": ["bad_output"], "max_attempts": tries}} if tries > 1 else {}


@st.composite
def flows(draw: st.DrawFn, loops: bool) -> dict[str, Any]:
    """A flow (as data) and its called flow: steps s0..sN of random kinds, each leading on to a later one (and, with
    `loops`, decisions that go back), ending at `end`; `answers` says what each request key may be answered."""
    count = draw(st.integers(1, 5))
    steps: dict[str, Any] = {}
    answers: dict[str, tuple[list[str], list[str]]] = {}  # key -> (what may be answered, the worst answers)
    child = {"flowrun": 1, "name": "Child", "steps": {
        "c1": {"kind": "process", "instruction": "Count.", "output_schema": NUMBER, **_retry(tries := draw(
            st.integers(1, 2))), "next": "c2"},
        "c2": {"kind": "terminal", "instruction": "Say it."}}}
    for i in range(count):
        sid, after = f"s{i}", f"s{i + 1}" if i + 1 < count else "end"
        later = [f"s{j}" for j in range(i + 1, count)] + ["end"]
        kind = draw(st.sampled_from(["ask", "ask", "data", "pick", "map", "agent"] + (["back"] if loops else [])))
        if kind == "ask":
            schema, tries = draw(st.booleans()), draw(st.integers(1, 3))
            steps[sid] = {"kind": "process", "instruction": f"Step {i}.", "next": after,
                          **({"output_schema": NUMBER, **_retry(tries)} if schema else {})}
            answers[sid] = ([GOOD, BAD], [BAD] * (2 * tries - 1) + [GOOD]) if schema else ([TEXT], [TEXT])
        elif kind == "data":
            steps[sid] = {"kind": "process", "output": "data", "next": after}
        elif kind in ("pick", "back"):
            tries = draw(st.integers(1, 2))
            targets = [draw(st.sampled_from(later)), draw(st.sampled_from(later))] if kind == "pick" else \
                [draw(st.sampled_from([f"s{j}" for j in range(i + 1)])), after]
            steps[sid] = {"kind": "decision", "question": "Which way?", "branches": dict(zip("ab", targets,
                                                                                           strict=True)),
                          **_retry(tries)}
            answers[sid] = (["a", "b", NOT_A_LABEL], [NOT_A_LABEL] * (tries - 1))  # the label: the path's
        elif kind == "map":
            items, tries = draw(st.integers(1, 3)), draw(st.integers(1, 2))
            steps[sid] = {"kind": "map", "items": json.dumps(list(range(items))), "max_items": items, "next": after,
                          "steps": {f"m{i}": {"kind": "terminal", "instruction": "Solve {{ item }}.",
                                              "output_schema": NUMBER, **_retry(tries)}}}
            for n in range(items):
                answers[f"{sid}[{n}].m{i}"] = ([GOOD, BAD], [BAD] * (2 * tries - 1) + [GOOD])
        else:
            steps[sid] = {"kind": "agent", "flow": "child", "next": after}
            c1 = child["steps"]["c1"].get("retry", {}).get("max_attempts", 1)
            answers[f"{sid}.c1"] = ([GOOD, BAD], [BAD] * (2 * c1 - 1) + [GOOD])
            answers[f"{sid}.c2"] = ([TEXT], [TEXT])
    speaks = draw(st.booleans())
    steps["end"] = {"kind": "terminal", **({"instruction": "Answer."} if speaks else {"output": "done"})}
    if speaks:
        answers["end"] = ([TEXT], [TEXT])
    flow = {"flowrun": 1, "name": "Random", "steps": steps,
            "limits": {"max_steps": draw(st.integers(3, 12)),
                       **({"max_visits": draw(st.integers(1, 3))} if loops and draw(st.booleans()) else {})}}
    if any(s["kind"] == "agent" for s in steps.values()):
        flow["agents"] = ["child"]
    return {"flow": flow, "child": child, "answers": answers}


def _checked(folder: Path, drawn: dict[str, Any]) -> CheckedFlow:
    (folder / "child.yaml").write_text(yaml.safe_dump(drawn["child"]))
    text = yaml.safe_dump(drawn["flow"], sort_keys=False)
    checked = check_flow_text(text, str(folder / "flow.yaml"), load_tools([]).tools)
    assert checked.ok, [d for d in checked.diagnostics if d.severity.value == "error"]
    return checked


def _calls(folder: Path, checked: CheckedFlow, responses: list[dict[str, str]]) -> int:
    """The model calls one run of `checked` on `responses` makes, its child runs' included, however it ends."""
    storage = Storage(f"sqlite:///{folder / 'runs.db'}")
    try:
        kernel = kernel_for([checked], ScriptedBackend.from_responses(responses), storage,
                            workspaces=folder / "workspaces")
        kernel.retry, kernel.sleep = Backoff(attempts=1), at_once
        asyncio.run(run_flow(kernel, checked.compiled, {}, file=str(folder / "flow.yaml")))
        return sum(1 for call in storage.rows(SyscallRow) if call.kind in LLM_KINDS)
    finally:
        storage.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows(loops=True), st.randoms(use_true_random=False))
def test_no_run_makes_more_model_calls_than_the_bound(drawn: dict[str, Any], rnd: Any) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        checked = _checked(folder, drawn)
        bound = worst_case(checked.compiled)
        responses = [{"key": key, "text": rnd.choice(alphabet)}
                     for key, (alphabet, _) in drawn["answers"].items() for _ in range(8)]
        rnd.shuffle(responses)  # the order of keys does not matter; each key's answers come in their order
        assert _calls(folder, checked, responses) <= bound.cost.calls


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows(loops=False))
def test_the_bound_is_exact_on_loop_free_flows(drawn: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        checked = _checked(folder, drawn)
        bound = worst_case(checked.compiled)
        # the costliest path, in the order the steps run, and each key's worst answers along it
        path = sorted(bound.visits, key=lambda s: (s == "end", int(s[1:]) if s != "end" else 0))
        steps = drawn["flow"]["steps"]
        worst: dict[str, list[str]] = defaultdict(list)
        for at, sid in enumerate(path):
            for key, (_, answers) in drawn["answers"].items():
                if key == sid or key.startswith((f"{sid}[", f"{sid}.")):
                    worst[key] = list(answers)
            if steps[sid]["kind"] == "decision":
                after = path[at + 1] if at + 1 < len(path) else None
                label = next((k for k, target in steps[sid]["branches"].items() if target == after), "a")
                worst[sid].append(label)
        responses = [{"key": key, "text": text} for key, texts in worst.items() for text in texts]
        assert _calls(folder, checked, responses) == bound.cost.calls


def test_the_bound_of_the_examples_and_the_limits_that_cap_it() -> None:
    from engine.flow.validate import load_flow

    currency = worst_case(load_flow(FLOWS / "currency_quote.yaml").compiled)
    assert currency.cost.calls == 4  # understand: two tries, each asked twice; limits.max_model_calls: 4 too
    team = worst_case(load_flow(FLOWS / "trip_team.yaml").compiled)
    assert team.cost.calls == 2 + 14 * 4  # travel_agent's reading, then rec_agent's (at most 4) for 14 days


def test_validate_max_calls_and_graph_budget(tmp_path: Path) -> None:
    flow = FLOWS / "trip_team.yaml"
    code, out, _ = cli("validate", "--max-calls", "58", str(flow))
    assert code == 0, out
    code, out, _ = cli("validate", "--max-calls", "57", "--max-tokens", "100", str(flow))
    assert code == 1
    assert "FR135" in out and "one run can cost up to 58 model calls, more than --max-calls 57" in out
    assert "dinners 56 calls (1 x 56)" in out and "more than --max-tokens 100" in out
    code, out, _ = cli("graph", "--budget", str(flow))
    assert code == 0 and "%% one run: at most 58 model calls" in out and "dinners → rec_agent · 56 calls" in out
