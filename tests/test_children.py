"""Agent, map and parallel steps: child runs on the same kernel, stored with their parent, their answers merged in
order, run at once up to max_concurrency, failures cancelling or tolerated, resumed and replayed exactly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from engine.errors import RunStatus
from engine.flow.manifest import load_tools
from engine.flow.validate import CheckedFlow, check_flow_text
from engine.interpreter.children import MAX_DEPTH, child_id
from engine.interpreter.replay import replay_run
from engine.interpreter.resume import resume_run, stopped
from engine.interpreter.runs import LLM_KINDS, record
from engine.interpreter.state import Origin
from engine.interpreter.walk import RunOutcome, run_flow
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage
from engine.kernel.tables import AuditRow, RunRow, SyscallRow
from engine.llm.scripted import ScriptedBackend

HELPER = """\
flowrun: 1
name: Helper
inputs:
  topic: {type: string}
  days: {type: integer, default: 1}
steps:
  answer:
    kind: terminal
    instruction: Sum up {{ inputs.topic }} in {{ inputs.days }} days.
    output_schema: {type: object, required: [summary], properties: {summary: {type: string}}}
"""

LEAD = """\
flowrun: 1
name: Lead
inputs:
  q: {type: string}
agents: [helper]
steps:
  split:
    kind: process
    instruction: Split {{ inputs.q }} into parts.
    output_schema: {type: object, required: [parts], properties: {parts: {type: array, items: {type: string}}}}
    next: each
  each:
    kind: map
    items: "{{ steps.split.output.parts }}"
    %(map)s
    steps:
      solve:
        kind: process
        instruction: Solve part {{ index }}, {{ item }}, of {{ inputs.q }}.
        output_schema: {type: object, required: [n], properties: {n: {type: integer}}}
        next: said
      said:
        kind: terminal
        output: "{{ steps.solve.output.n }}"
    next: both
  both:
    kind: parallel
    branches:
      mine:
        steps:
          think: {kind: terminal, instruction: "Think about {{ steps.each.output }}."}
      theirs:
        flow: helper
        inputs: {topic: "{{ inputs.q }}", days: "{{ steps.each.output | length }}"}
    next: ask
  ask:
    kind: agent
    flow: helper
    inputs: {topic: "{{ steps.both.output.mine }}"}
    next: done
  done:
    kind: terminal
    output: "{{ steps.both.output.theirs.summary }} / {{ steps.ask.output.summary }} / {{ steps.each.output }}"
"""


def answers(parts: list[str], solved: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """A cassette for LEAD: part n solved as {"n": n * 10}, unless `solved` gives its answer."""
    solved = solved or {}
    return [{"key": "split", "text": json.dumps({"parts": parts})},
            *({"key": f"each[{n}].solve", "text": solved.get(n, json.dumps({"n": n * 10})), "times": 2}
              for n in range(len(parts))),
            {"key": "both.mine.think", "text": "mine"},
            {"key": "both.theirs.answer", "text": '{"summary": "theirs"}'},
            {"key": "ask.answer", "text": '{"summary": "asked"}'}]


def lead(tmp_path: Path, map_fields: str = "") -> CheckedFlow:
    (tmp_path / "helper.yaml").write_text(HELPER)
    file = tmp_path / "lead.yaml"
    file.write_text(LEAD % {"map": map_fields})
    checked = check_flow_text(file.read_text(), str(file), load_tools([]).tools)
    assert checked.ok, checked.diagnostics
    return checked


def kernel_on(tmp_path: Path, responses: list[dict[str, Any]], token_delay: float = 0.0, slots: int = 8) -> Kernel:
    backend = ScriptedBackend.from_responses(responses, token_delay=token_delay, slots=slots)
    return Kernel(backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"), workspaces=tmp_path / "workspaces")


def go(kernel: Kernel, checked: CheckedFlow, q: str = "the task") -> RunOutcome:
    return asyncio.run(run_flow(kernel, checked.compiled, {"q": q}, file=str(checked_file(checked))))


def checked_file(checked: CheckedFlow) -> Path:
    return Path(checked.compiled.agents["helper"].file).parent / "lead.yaml"


def model_calls(storage: Storage) -> list[tuple[str, str | None]]:
    return sorted((c.run_id, c.key) for c in storage.rows(SyscallRow) if c.kind in LLM_KINDS and c.error is None)


def test_map_parallel_and_agent_steps_run_child_runs_stored_with_their_parent(tmp_path: Path) -> None:
    checked = lead(tmp_path)
    kernel = kernel_on(tmp_path, answers(["a", "b", "c"]))
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FINISHED, outcome.error
    assert outcome.answer == "theirs / asked / [0, 10, 20]"
    found = record(kernel.storage, outcome.run_id)
    assert [s.output for s in found.steps if s.step == "both"] == [{"mine": "mine", "theirs": {"summary": "theirs"}}]
    places = [(c.run.parent, c.run.parent_step, c.run.parent_visit, c.run.branch, c.run.agent) for c in found.children]
    assert places == [(outcome.run_id, "each", 1, "0", "Lead"), (outcome.run_id, "each", 1, "1", "Lead"),
                      (outcome.run_id, "each", 1, "2", "Lead"), (outcome.run_id, "both", 1, "mine", "Lead"),
                      (outcome.run_id, "both", 1, "theirs", "Helper"), (outcome.run_id, "ask", 1, "", "Helper")]
    # a child's id is its place, so that a resumed parent finds it
    assert [c.run.id for c in found.children][:1] == [child_id(Origin(outcome.run_id, "each", 1, "0"))]
    # the helper called from the branch got its inputs from templates, read as the integer its schema asks for
    assert next(c.run.inputs for c in found.children if c.run.branch == "theirs") == {"topic": "the task", "days": 3}
    # only runs a user started are listed; the children are in their parent's record
    assert [r.id for r in kernel.storage.find_runs()] == [outcome.run_id]
    # each model call's request key says where in the tree it was asked
    keys = {c.key for c in kernel.storage.rows(SyscallRow) if c.kind in LLM_KINDS}
    assert keys == {"split", "each[0].solve", "each[1].solve", "each[2].solve", "both.mine.think",
                    "both.theirs.answer", "ask.answer"}


def test_a_map_gives_its_answers_in_item_order_whatever_order_they_end_in(tmp_path: Path) -> None:
    checked = lead(tmp_path)
    # the first item's answer is the longest, so it ends last (each token takes token_delay)
    solved = {0: json.dumps({"n": 7, "pad": "word " * 60}), 2: json.dumps({"n": 9})}
    kernel = kernel_on(tmp_path, answers(["a", "b", "c"], solved), token_delay=0.002)
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FINISHED, outcome.error
    children = [c.run for c in record(kernel.storage, outcome.run_id).children if c.run.parent_step == "each"]
    assert max(children, key=lambda r: r.finished or 0).branch == "0"
    assert outcome.answer.endswith("[7, 10, 9]")


def overlap(runs: list[RunRow]) -> int:
    """The most of `runs` that were running at one time."""
    edges = sorted([(r.created, 1) for r in runs] + [(r.finished or 0, -1) for r in runs])
    most = now = 0
    for _, change in edges:
        now += change
        most = max(most, now)
    return most


@pytest.mark.parametrize("width", [1, 2])
def test_max_concurrency_bounds_the_child_runs_at_once(tmp_path: Path, width: int) -> None:
    checked = lead(tmp_path, f"max_concurrency: {width}")
    kernel = kernel_on(tmp_path, answers(list("abcdef")), token_delay=0.003)
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FINISHED, outcome.error
    items = [c.run for c in record(kernel.storage, outcome.run_id).children if c.run.parent_step == "each"]
    assert len(items) == 6 and overlap(items) == width


def test_without_a_bound_every_item_runs_at_once(tmp_path: Path) -> None:
    checked = lead(tmp_path)
    kernel = kernel_on(tmp_path, answers(list("abcdef")), token_delay=0.003)
    outcome = go(kernel, checked)
    items = [c.run for c in record(kernel.storage, outcome.run_id).children if c.run.parent_step == "each"]
    assert overlap(items) == 6


def test_a_failing_item_cancels_the_others_and_fails_the_step(tmp_path: Path) -> None:
    checked = lead(tmp_path)
    # item 1 answers with no JSON twice: its schema fails; the others are slow, so they are still running
    slow = "word " * 200
    solved = {0: json.dumps({"n": 0, "pad": slow}), 1: "no idea", 2: json.dumps({"n": 20, "pad": slow})}
    kernel = kernel_on(tmp_path, answers(["a", "b", "c"], solved), token_delay=0.002)
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FAILED
    assert "step each: item 1 failed" in (outcome.error or "") and "output_schema" in (outcome.error or "")
    statuses = {c.run.branch: c.run.status for c in record(kernel.storage, outcome.run_id).children}
    assert statuses == {"0": "interrupted", "1": "failed", "2": "interrupted"}


@pytest.mark.parametrize("tolerance", ["tolerated_failures: 1", "tolerated_failures: 34%"])
def test_a_tolerated_failure_is_null_in_the_output_with_its_error_kept(tmp_path: Path, tolerance: str) -> None:
    checked = lead(tmp_path, tolerance)
    kernel = kernel_on(tmp_path, answers(["a", "b", "c"], {1: "no idea"}))
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FINISHED, outcome.error
    assert outcome.answer.endswith("[0, None, 20]")
    failed = [c.run for c in record(kernel.storage, outcome.run_id).children if c.run.status == "failed"]
    assert [r.branch for r in failed] == ["1"] and "output_schema" in (failed[0].error or "")


def test_more_failures_than_tolerated_fail_the_step(tmp_path: Path) -> None:
    checked = lead(tmp_path, "tolerated_failures: 33%")  # one third of 3 items is 0.99: none
    outcome = go(kernel_on(tmp_path, answers(["a", "b", "c"], {1: "no idea"})), checked)
    assert outcome.status == RunStatus.FAILED and "item 1 failed" in (outcome.error or "")


def test_more_items_than_max_items_fail_the_step_at_its_items(tmp_path: Path) -> None:
    checked = lead(tmp_path, "max_items: 2")
    outcome = go(kernel_on(tmp_path, answers(["a", "b", "c"])), checked)
    assert outcome.status == RunStatus.FAILED
    assert "lead.yaml:14:" in (outcome.error or "") and "3 items, more than its max_items (2)" in (outcome.error or "")


def test_items_that_are_not_a_list_fail_the_step(tmp_path: Path) -> None:
    responses = answers([])
    lead(tmp_path)
    text = (tmp_path / "lead.yaml").read_text().replace("{{ steps.split.output.parts }}", "{{ inputs.q }}")
    (tmp_path / "lead.yaml").write_text(text)
    checked = check_flow_text(text, str(tmp_path / "lead.yaml"), load_tools([]).tools)
    outcome = go(kernel_on(tmp_path, responses), checked, q="apples, pears")
    assert outcome.status == RunStatus.FAILED and "its items are 'apples, pears', not a list" in (outcome.error or "")


def test_an_agent_the_flow_does_not_list_is_refused_and_audited(tmp_path: Path) -> None:
    checked = lead(tmp_path)
    flow = checked.compiled.flow
    flow.agents = ()  # as if the flow had been changed after it was checked
    outcome = go(kernel_on(tmp_path, answers(["a"])), checked)
    assert outcome.status == RunStatus.FAILED
    assert "may not call agent 'Helper'" in (outcome.error or "")
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    (audit,) = storage.rows(AuditRow)
    assert (audit.agent, audit.action, audit.target, audit.allowed) == ("Lead", "call_agent", "Helper", False)


def test_an_interrupted_run_resumes_its_children_without_asking_twice(tmp_path: Path) -> None:
    checked = lead(tmp_path, "max_concurrency: 1")
    (tmp_path / "whole").mkdir()
    whole = kernel_on(tmp_path / "whole", answers(list("abcd")))
    uninterrupted = go(whole, checked)
    assert uninterrupted.status == RunStatus.FINISHED

    db = tmp_path / "stopped"
    db.mkdir()
    kernel = kernel_on(db, answers(list("abcd")), token_delay=0.01)

    run_id = interrupt(kernel, checked, lambda runs: sum(r.status == "finished" for r in runs
                                                         if r.parent_step == "each") >= 2)
    before = model_calls(kernel.storage)
    assert any(r.status == "interrupted" for r in kernel.storage.rows(RunRow) if r.parent_step == "each")

    resumed_kernel = kernel_on(db, answers(list("abcd")))
    # a child's id given to resume resumes the run a user started, which continues the child
    found = stopped(resumed_kernel.storage, child_id(Origin(run_id, "each", 1, "0")))
    assert found.run.id == run_id
    outcome = asyncio.run(resume_run(resumed_kernel, checked.compiled, found, file=str(checked_file(checked))))
    assert (outcome.status, outcome.answer) == (RunStatus.FINISHED, uninterrupted.answer)
    after = model_calls(resumed_kernel.storage)
    assert len(after) == len(set(after)) == len(model_calls(whole.storage)), "a model call was made twice"
    assert set(before) <= set(after)


def test_a_replay_goes_through_the_children_with_no_model(tmp_path: Path) -> None:
    checked = lead(tmp_path, "max_concurrency: 2")
    kernel = kernel_on(tmp_path, answers(list("abc")))
    outcome = go(kernel, checked)
    replay = asyncio.run(replay_run(record(kernel.storage, outcome.run_id), checked, file=str(checked_file(checked))))
    assert replay.differences == [] and replay.outcome.answer == outcome.answer


def test_a_replay_that_asks_a_child_something_else_diverges(tmp_path: Path) -> None:
    checked = lead(tmp_path)
    kernel = kernel_on(tmp_path, answers(list("abc")))
    outcome = go(kernel, checked)
    recorded = record(kernel.storage, outcome.run_id)
    recorded.children[1].syscalls.clear()  # item 1's answers lost
    replay = asyncio.run(replay_run(recorded, checked, file=str(checked_file(checked))))
    assert replay.outcome.status == RunStatus.FAILED
    assert "item 1 failed" in (replay.outcome.error or "") and "each[1].solve" in (replay.outcome.error or "")


def test_an_input_a_child_refuses_at_run_time_fails_the_step_at_its_line(tmp_path: Path) -> None:
    checked = lead(tmp_path)
    responses = answers(["a"])
    outcome = go(kernel_on(tmp_path, responses), checked)
    assert outcome.status == RunStatus.FINISHED
    text = (tmp_path / "lead.yaml").read_text().replace("days: \"{{ steps.each.output | length }}\"",
                                                        "days: \"{{ inputs.q }}\"")
    checked = check_flow_text(text, str(tmp_path / "lead.yaml"), load_tools([]).tools)
    assert checked.ok
    (tmp_path / "runs.db").unlink()
    outcome = go(kernel_on(tmp_path, answers(["a"])), checked, q="many")
    assert outcome.status == RunStatus.FAILED
    assert "lead.yaml:34:" in (outcome.error or "") and "input 'days'" in (outcome.error or "")


def test_runs_nested_deeper_than_the_limit_fail(tmp_path: Path) -> None:
    text = _nested(MAX_DEPTH + 1)
    checked = check_flow_text(text, str(tmp_path / "deep.yaml"), load_tools([]).tools)
    assert checked.ok, checked.diagnostics
    kernel = kernel_on(tmp_path, [{"text": "hi", "times": 99}])
    outcome = asyncio.run(run_flow(kernel, checked.compiled, {}, file=str(tmp_path / "deep.yaml")))
    assert outcome.status == RunStatus.FAILED and f"more than {MAX_DEPTH} deep" in (outcome.error or "")
    assert asyncio.run(run_flow(kernel, check_flow_text(_nested(MAX_DEPTH), "deep.yaml", load_tools([]).tools)
                                .compiled, {}, file="deep.yaml")).status == RunStatus.FINISHED


def _nested(depth: int) -> str:
    """A flow of `depth` maps, each the only step but a terminal of the one around it."""
    def level(n: int, indent: str) -> str:
        if n == depth:
            return f"{indent}s{n}: {{kind: terminal, instruction: say}}\n"
        return (f"{indent}s{n}:\n{indent}  kind: map\n{indent}  items: \"[1]\"\n{indent}  next: t{n}\n"
                f"{indent}  steps:\n{level(n + 1, indent + '    ')}"
                f"{indent}t{n}: {{kind: terminal, output: \"{{{{ steps.s{n}.output }}}}\"}}\n")
    return "flowrun: 1\nname: Deep\nsteps:\n" + level(0, "  ")


def test_a_tree_of_runs_is_bounded_by_max_child_runs(tmp_path: Path) -> None:
    checked = lead(tmp_path)
    text = (tmp_path / "lead.yaml").read_text().replace("agents: [helper]", "agents: [helper]\nlimits: "
                                                        "{max_child_runs: 4}")
    checked = check_flow_text(text, str(tmp_path / "lead.yaml"), load_tools([]).tools)
    assert checked.ok, checked.diagnostics
    outcome = go(kernel_on(tmp_path, answers(list("abc"))), checked)  # 3 items, then 2 branches: 5 children
    assert outcome.status == RunStatus.FAILED
    assert "started limits.max_child_runs (4) child runs" in (outcome.error or "")


def test_runs_show_prints_the_tree_and_prune_removes_it_whole(tmp_path: Path) -> None:
    from engine.interpreter.prune import prune
    from tests.test_run_cli import cli

    checked = lead(tmp_path)
    kernel = kernel_on(tmp_path, answers(["a", "b"]))
    outcome = go(kernel, checked)
    db = str(tmp_path / "runs.db")
    code, out, _ = cli("runs", "show", outcome.run_id[:10], "--db", db)
    assert code == 0 and "child runs:" in out
    second = child_id(Origin(outcome.run_id, "each", 1, "1"))
    assert f"step each (visit 1), item 1: run {second[:12]} · Lead · finished" in out
    assert "step both (visit 1), branch theirs: run" in out and "· Helper · finished · 1 steps" in out
    code, out, _ = cli("runs", "show", child_id(Origin(outcome.run_id, "each", 1, "0")), "--db", db)
    assert code == 0 and f"child of run {outcome.run_id[:12]} at step each (visit 1), item 0" in out
    code, out, _ = cli("runs", "list", "--db", db, "--json")
    assert [r["run_id"] for r in json.loads(out)] == [outcome.run_id]

    pruned = prune(kernel.storage)
    assert [r.id for r in pruned.runs] == [outcome.run_id] and pruned.rows["runs"] == 1 + 5
    assert kernel.storage.rows(RunRow) == [] and kernel.storage.rows(SyscallRow) == []


@pytest.mark.parametrize("reference", ["x" * 5000, "a\0b", "sub/" + "y" * 300 + ".yaml", "."])
def test_a_flow_reference_no_file_can_have_is_not_found(tmp_path: Path, reference: str) -> None:
    text = f"flowrun: 1\nname: Caller\nagents: [{json.dumps(reference)}]\nsteps:\n  call:\n    kind: agent\n" \
           f"    flow: {json.dumps(reference)}\n    next: done\n  done: {{kind: terminal, output: x}}\n"
    checked = check_flow_text(text, str(tmp_path / "caller.yaml"), load_tools([]).tools)
    assert {d.code for d in checked.diagnostics} == {"FR120"}


def test_a_sub_flow_inside_a_maps_sub_flow_sees_item_and_index(tmp_path: Path) -> None:
    text = """\
flowrun: 1
name: Nested
steps:
  outer:
    kind: map
    items: '["x", "y"]'
    steps:
      both:
        kind: parallel
        branches:
          one:
            steps:
              said: {kind: terminal, output: "{{ item }}{{ index }}"}
        next: done_item
      done_item: {kind: terminal, output: "{{ steps.both.output.one }}"}
    next: done
  done: {kind: terminal, output: "{{ steps.outer.output | join(',') }}"}
"""
    checked = check_flow_text(text, str(tmp_path / "nested.yaml"), load_tools([]).tools)
    assert checked.ok, checked.diagnostics
    outcome = asyncio.run(run_flow(kernel_on(tmp_path, []), checked.compiled, {}, file="nested.yaml"))
    assert (outcome.status, outcome.answer) == (RunStatus.FINISHED, "x0,y1"), outcome.error


def interrupt(kernel: Kernel, checked: CheckedFlow, stop_when: Any, inputs: dict[str, Any] | None = None,
              file: str | None = None) -> str:
    """Run `checked` (LEAD, by default) on `kernel`, cancel it once `stop_when(its runs)` holds; the run's id."""
    async def main() -> str:
        task = asyncio.ensure_future(run_flow(kernel, checked.compiled, {"q": "the task"} if inputs is None else
                                              inputs, file=file or str(checked_file(checked))))
        while not stop_when(kernel.storage.rows(RunRow)):
            assert not task.done(), "the run ended before it could be stopped"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return next(r.id for r in kernel.storage.rows(RunRow) if r.parent is None)

    return asyncio.run(main())


def test_a_resume_keeps_a_tolerated_failure_and_asks_nothing_of_it_again(tmp_path: Path) -> None:
    checked = lead(tmp_path, "max_concurrency: 1\n    tolerated_failures: 1")
    responses = answers(list("abc"), {0: "no idea", 1: json.dumps({"n": 10, "pad": "word " * 100})})
    kernel = kernel_on(tmp_path, responses, token_delay=0.005)
    run_id = interrupt(kernel, checked, lambda runs: any(r.branch == "0" and r.status == "failed" for r in runs)
                       and any(r.branch == "1" for r in runs))
    found = stopped(kernel.storage, run_id)
    resumed = kernel_on(tmp_path, responses)
    resumed.scheduler.backend.skip(found.answered)
    outcome = asyncio.run(resume_run(resumed, checked.compiled, found, file=str(checked_file(checked))))
    assert (outcome.status, outcome.answer) == (RunStatus.FINISHED, "theirs / asked / [None, 10, 20]"), outcome.error
    asked = [key for _, key in model_calls(resumed.storage)]
    assert asked.count("each[0].solve") == 2, "the tolerated failure was asked again"


def test_a_resume_refuses_a_called_flow_that_changed_unless_forced(tmp_path: Path) -> None:
    from engine.interpreter.resume import ResumeError, check_flow_for

    checked = lead(tmp_path)
    kernel = kernel_on(tmp_path, answers(list("ab")), token_delay=0.02)
    run_id = interrupt(kernel, checked, lambda runs: any(r.agent == "Helper" and r.status == "running" for r in runs))
    (tmp_path / "helper.yaml").write_text(HELPER.replace("Sum up", "Summarize"))
    changed = check_flow_text((tmp_path / "lead.yaml").read_text(), str(tmp_path / "lead.yaml"),
                              load_tools([]).tools)
    found = stopped(kernel.storage, run_id)
    with pytest.raises(ResumeError, match=r"helper\.yaml, which run .* called as child run .* changed since"):
        check_flow_for(found, changed.compiled, force=False, rerun=False)
    check_flow_for(found, changed.compiled, force=True, rerun=False)


def test_max_child_runs_counts_the_children_started_before_a_resume(tmp_path: Path) -> None:
    """A map visited twice, 2 items each, under a limit of 3 child runs: stopped in its second visit and resumed,
    the run still fails on the limit (the first visit's children are not run again, but they count)."""
    text = """\
flowrun: 1
name: Twice
limits: {max_child_runs: 3, max_steps: 10}
steps:
  each:
    kind: map
    items: "[1, 2]"
    max_concurrency: 1
    steps:
      say: {kind: terminal, instruction: "Say {{ item }}."}
    next: again
  again:
    kind: decision
    question: Again?
    decide: "{{ 'yes' if visits.each < 2 else 'no' }}"
    branches: {"yes": each, "no": done}
  done: {kind: terminal, output: "{{ steps.each.output }}"}
"""
    checked = check_flow_text(text, str(tmp_path / "twice.yaml"), load_tools([]).tools)
    assert checked.ok, checked.diagnostics
    responses = [{"key": f"each[{n}].say", "text": "word " * 30, "times": 2} for n in range(2)]
    kernel = kernel_on(tmp_path, responses, token_delay=0.005)

    run_id = interrupt(kernel, checked, lambda runs: any(r.parent_visit == 2 for r in runs), {}, "twice.yaml")
    found = stopped(kernel.storage, run_id)
    outcome = asyncio.run(resume_run(kernel_on(tmp_path, responses), checked.compiled, found, file="twice.yaml"))
    assert outcome.status == RunStatus.FAILED and "limits.max_child_runs (3)" in (outcome.error or "")


def test_a_flow_called_by_many_paths_is_checked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two flows a level, each calling both of the next: 2^12 paths to the last level, each file read once."""
    import engine.flow.validate as validate

    levels = 12
    for n in range(levels + 1):
        for side in "ab":
            body = ("steps:\n  done: {kind: terminal, output: x}\n" if n == levels else
                    f"agents: [l{n + 1}a, l{n + 1}b]\nsteps:\n  one: {{kind: agent, flow: l{n + 1}a, next: two}}\n"
                    f"  two: {{kind: agent, flow: l{n + 1}b, next: done}}\n  done: {{kind: terminal, output: x}}\n")
            (tmp_path / f"l{n}{side}.yaml").write_text(f"flowrun: 1\nname: L{n}{side}\n{body}")
    loaded: list[str] = []
    real = validate.load_file
    monkeypatch.setattr(validate, "load_file", lambda path: loaded.append(Path(path).name) or real(path))
    report = validate.validate_paths([tmp_path])
    assert report.diagnostics == [] and len(report.files) == 2 * (levels + 1)
    assert len(loaded) <= 2 * len(report.files)  # as a file given, and as a flow called: 2^13 without


def test_a_string_input_of_a_called_flow_is_rendered_to_text(tmp_path: Path) -> None:
    """`{{ item }}` of a map over numbers gives the called flow's string input the number's text."""
    (tmp_path / "helper.yaml").write_text(HELPER)
    text = """\
flowrun: 1
name: Numbers
agents: [helper]
steps:
  each:
    kind: map
    items: "[7, 8]"
    flow: helper
    inputs: {topic: "{{ item }}", days: "{{ index + 1 }}"}
    next: done
  done: {kind: terminal, output: "{{ steps.each.output | map(attribute='summary') | join(',') }}"}
"""
    checked = check_flow_text(text, str(tmp_path / "numbers.yaml"), load_tools([]).tools)
    assert checked.ok, checked.diagnostics
    kernel = kernel_on(tmp_path, [{"key": f"each[{n}].answer", "text": json.dumps({"summary": f"s{n}"})}
                                  for n in range(2)])
    outcome = asyncio.run(run_flow(kernel, checked.compiled, {}, file=str(tmp_path / "numbers.yaml")))
    assert (outcome.status, outcome.answer) == (RunStatus.FINISHED, "s0,s1"), outcome.error
    given = [r.inputs for r in kernel.storage.rows(RunRow) if r.parent]
    assert given == [{"topic": "7", "days": 1}, {"topic": "8", "days": 2}]


CALLER = """\
flowrun: 1
name: Caller
agents: [%(ref)s]
steps:
  ask:
    kind: agent
    flow: %(ref)s
    next: done
  done: {kind: terminal, output: "{{ steps.ask.output.count }}"}
"""


def test_fields_of_a_called_flows_answer_built_by_one_expression_are_not_refused(tmp_path: Path) -> None:
    (tmp_path / "counter.yaml").write_text("flowrun: 1\nname: Counter\nsteps:\n  done: {kind: terminal, "
                                           "output: \"{{ {'count': 1} }}\"}\n")
    checked = check_flow_text(CALLER % {"ref": "counter"}, str(tmp_path / "caller.yaml"), load_tools([]).tools)
    assert checked.diagnostics == []


def test_an_absolute_flow_reference_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "counter.yaml").write_text("flowrun: 1\nname: Counter\nsteps:\n  done: {kind: terminal, "
                                           "output: \"{{ {'count': 1} }}\"}\n")
    checked = check_flow_text(CALLER % {"ref": json.dumps(str(tmp_path / "counter.yaml"))},
                              str(tmp_path / "caller.yaml"), load_tools([]).tools)
    assert [d.code for d in checked.diagnostics] == ["FR120"]


@pytest.mark.parametrize("body, field", [("steps: {s: {kind: terminal, output: x}}\n        inputs: {a: b}", "inputs"),
                                         ("flow: helper\n        start: s", "start")])
def test_a_field_a_branch_would_ignore_is_refused(tmp_path: Path, body: str, field: str) -> None:
    (tmp_path / "helper.yaml").write_text(HELPER)
    text = f"""\
flowrun: 1
name: Ignored
agents: [helper]
steps:
  both:
    kind: parallel
    branches:
      one:
        {body}
    next: done
  done: {{kind: terminal, output: x}}
"""
    checked = check_flow_text(text, str(tmp_path / "ignored.yaml"), load_tools([]).tools)
    assert any(d.code == "FR003" and f"`{field}`" in d.message for d in checked.diagnostics), checked.diagnostics


def test_a_replay_compares_the_child_runs_and_a_child_alone_is_refused(tmp_path: Path) -> None:
    from engine.interpreter.replay import ReplayError

    checked = lead(tmp_path, "tolerated_failures: 1")
    kernel = kernel_on(tmp_path, answers(list("abc"), {1: "no idea"}))
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FINISHED and outcome.answer.endswith("[0, None, 20]")
    recorded = record(kernel.storage, outcome.run_id)
    replay = asyncio.run(replay_run(recorded, checked, file=str(checked_file(checked))))
    assert replay.differences == [], replay.differences  # the tolerated failure fails again, the same way

    recorded.children[2].run.answer = 21  # as if item 2 had been recorded with another answer
    replay = asyncio.run(replay_run(recorded, checked, file=str(checked_file(checked))))
    assert replay.differences == ["child run at step each (visit 1), item 2: the recorded run finished ('21'), "
                                  "the replay finished ('20')"]
    with pytest.raises(ReplayError, match="is a child run of run"):
        asyncio.run(replay_run(recorded.children[0], checked, file=str(checked_file(checked))))


def test_graph_draws_sub_flows_as_subgraphs_and_clusters_each_node_its_own(tmp_path: Path) -> None:
    from engine.flow.render import render_graph

    checked = lead(tmp_path)
    mermaid = render_graph(checked.compiled, "mermaid")
    assert 'subgraph sub' in mermaid and '["each: each item"]' in mermaid and '["both: branch mine"]' in mermaid
    assert '[["ask → helper"]]' in mermaid and "each -.-> sub" in mermaid
    dot = render_graph(checked.compiled, "dot")
    assert 'subgraph "cluster_each.item."' in dot and '"each" -> "each.item.solve" [style=dashed];' in dot
    text = """\
flowrun: 1
name: G
steps:
  a:
    kind: parallel
    branches:
      b_c: {steps: {d: {kind: terminal, output: "1"}}}
      b: {steps: {c_d: {kind: terminal, output: "2"}}}
    next: sub3_d
  sub3_d: {kind: terminal, output: "{{ steps.a.output }}"}
"""
    lines = render_graph(check_flow_text(text, "g.yaml", load_tools([]).tools).compiled, "mermaid").splitlines()
    nodes = [line.split("[")[0].split("(")[0].strip() for line in lines if "[" in line or "(" in line]
    assert len(nodes) == len(set(nodes)) == 6  # a, sub3_d, two subgraphs, d and c_d


def test_max_model_calls_and_max_tokens_bound_a_run_with_its_child_runs(tmp_path: Path) -> None:
    from engine.kernel.tables import SyscallRow as Calls

    lead(tmp_path)
    base = (tmp_path / "lead.yaml").read_text()
    # split, 3 items, the two branches (one a flow call), the agent step: 7 calls
    for limit, ok in ((7, True), (6, False)):
        text = base.replace("agents: [helper]", f"agents: [helper]\nlimits: {{max_model_calls: {limit}}}")
        checked = check_flow_text(text, str(tmp_path / "lead.yaml"), load_tools([]).tools)
        assert checked.ok, checked.diagnostics
        folder = tmp_path / f"calls{limit}"
        folder.mkdir()
        kernel = kernel_on(folder, answers(list("abc")))
        outcome = asyncio.run(run_flow(kernel, checked.compiled, {"q": "x"}, file=str(tmp_path / "lead.yaml")))
        assert (outcome.status == RunStatus.FINISHED) is ok, outcome.error
        made = [c for c in kernel.storage.rows(Calls) if c.kind in LLM_KINDS and c.error is None]
        assert len(made) == min(limit, 7)
        if not ok:
            assert f"limits.max_model_calls ({limit}) model calls, its child runs' included" in (outcome.error or "")
    text = base.replace("agents: [helper]", "agents: [helper]\nlimits: {max_tokens: 6}")
    checked = check_flow_text(text, str(tmp_path / "lead.yaml"), load_tools([]).tools)
    (tmp_path / "tokens").mkdir()
    kernel = kernel_on(tmp_path / "tokens", answers(list("abc")))
    outcome = asyncio.run(run_flow(kernel, checked.compiled, {"q": "x"}, file=str(tmp_path / "lead.yaml")))
    assert outcome.status == RunStatus.FAILED and "limits.max_tokens (6)" in (outcome.error or "")
    generated = sum(c.tokens for c in kernel.storage.rows(Calls) if c.kind in LLM_KINDS)
    assert generated <= 6  # each call got only the tokens left


def test_a_resumed_run_counts_the_model_calls_it_made_before(tmp_path: Path) -> None:
    lead(tmp_path, "max_concurrency: 1")
    text = (tmp_path / "lead.yaml").read_text().replace("agents: [helper]",
                                                        "agents: [helper]\nlimits: {max_model_calls: 6}")
    checked = check_flow_text(text, str(tmp_path / "lead.yaml"), load_tools([]).tools)
    kernel = kernel_on(tmp_path, answers(list("abc")), token_delay=0.005)
    run_id = interrupt(kernel, checked, lambda runs: any(r.branch == "1" and r.status == "finished" for r in runs))
    found = stopped(kernel.storage, run_id)
    assert found.spent[0] >= 3  # split and two items at least
    resumed = kernel_on(tmp_path, answers(list("abc")))
    resumed.scheduler.backend.skip(found.answered)
    outcome = asyncio.run(resume_run(resumed, checked.compiled, found, file=str(checked_file(checked))))
    assert outcome.status == RunStatus.FAILED and "limits.max_model_calls (6)" in (outcome.error or "")
