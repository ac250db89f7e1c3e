"""A step's `retry`, `catch` and `timeout`: retries wait as their policy says (on a fake clock), catch routes each
kind of error to its step with `error` for the templates after it, and a retry reuses nothing a resume would not."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from engine.errors import ErrorKind, RunStatus
from engine.flow.manifest import load_tools
from engine.flow.model import Retry
from engine.flow.validate import CheckedFlow, check_flow_text
from engine.interpreter.children import child_id
from engine.interpreter.recovery import delay
from engine.interpreter.replay import replay_run
from engine.interpreter.resume import resume_run, stopped
from engine.interpreter.runs import LLM_KINDS, record
from engine.interpreter.setup import kernel_for
from engine.interpreter.state import Origin
from engine.interpreter.walk import RunOutcome, run_flow
from engine.kernel.asking import Answer
from engine.kernel.kernel import Kernel
from engine.kernel.retry import Backoff
from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow, SyscallRow, ToolCallRow
from engine.llm.base import ModelUnavailable, Request, Result
from engine.llm.scripted import ScriptedBackend
from tests.conftest import FLOWS, JSONHandler
from tests.test_run_cli import cassette, cli

TOOLS = {
    "flaky": ("fails its first `fails` calls in a run, then answers", "flaky.py:flaky", 5, True,
              {"fails": {"type": "integer"}}),
    "counted": ("counts its calls in the run's workspace", "flaky.py:counted", 5, False, {"x": {"type": "integer"}}),
    "nap": ("sleeps", "flaky.py:nap", 0.3, True, {"seconds": {"type": "number"}}),
    "slow_once": ("slow on its first call in a run", "flaky.py:slow_once", 5, False, {"x": {"type": "integer"}}),
}
CODE = """\
from engine.kernel.tools import workspace


def _count(name):
    path = workspace.get() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


def flaky(fails):
    n = _count("flaky")
    if n <= fails:
        raise RuntimeError(f"service unavailable (call {n})")
    return {"call": n}


def counted(x):
    return {"x": x, "call": _count("counted")}


def nap(seconds):
    import time
    time.sleep(seconds)
    return {"slept": seconds}


def slow_once(x):
    import time
    n = _count("slow_once")
    if n == 1:
        time.sleep(4)
    return {"x": x, "call": n}
"""


class FakeClock:
    """Kernel.sleep's stand-in: records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def checked_flow(tmp_path: Path, text: str, name: str = "flow.yaml") -> CheckedFlow:
    tools = tmp_path / "tools"
    tools.mkdir(parents=True, exist_ok=True)
    (tools / "flaky.py").write_text(CODE)
    for tool, (description, entry, timeout, idempotent, properties) in TOOLS.items():
        manifest = {"name": tool, "description": description, "entry": entry, "timeout": timeout,
                    "idempotent": idempotent, "parameters": {"type": "object", "properties": properties,
                                                             "required": list(properties)}}
        (tools / f"{tool}.tool.yaml").write_text(json.dumps(manifest))
    file = tmp_path / name
    file.write_text(text)
    checked = check_flow_text(text, str(file), load_tools([tools]).tools)
    assert checked.ok, checked.diagnostics
    checked.file = str(file)  # type: ignore[attr-defined]  # where the runs say it is
    return checked


def kernel_on(tmp_path: Path, checked: CheckedFlow, responses: list[dict[str, Any]], backend: Any = None) -> Kernel:
    backend = backend or ScriptedBackend.from_responses(responses)
    kernel = kernel_for([checked], backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"),
                        workspaces=tmp_path / "workspaces")
    kernel.retry = Backoff(attempts=1)
    kernel.sleep = FakeClock()
    return kernel


def go(kernel: Kernel, checked: CheckedFlow, inputs: dict[str, Any] | None = None,
       run_id: str | None = None) -> RunOutcome:
    return asyncio.run(run_flow(kernel, checked.compiled, inputs or {}, file=checked.file, run_id=run_id))


def model_calls(storage: Storage) -> list[str | None]:
    return [c.key for c in storage.rows(SyscallRow) if c.kind in LLM_KINDS and c.error is None]


NUMBER = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}


def test_retry_waits_follow_the_backoff_on_a_fake_clock(tmp_path: Path) -> None:
    checked = checked_flow(tmp_path, f"""\
flowrun: 1
name: Retried
steps:
  count:
    kind: process
    instruction: Give a number.
    output_schema: {json.dumps(NUMBER)}
    retry: {{max_attempts: 4, backoff: {{initial: 2s, factor: 3, max: 15s}}}}
    next: done
  done:
    kind: terminal
    output: "{{{{ steps.count.output.n }}}}"
""")
    # each try asks twice (once more with what was wrong); three tries fail, the fourth answers
    kernel = kernel_on(tmp_path, checked, [{"key": "count", "text": "not JSON", "times": 6},
                                           {"key": "count", "text": '{"n": 7}'}])
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FINISHED, outcome.error
    assert outcome.answer == 7
    assert kernel.sleep.waits == [2.0, 6.0, 15.0]  # 2, 2*3, min(15, 2*9)
    assert len(model_calls(kernel.storage)) == 7


def test_the_backoff_caps_and_jitters_each_wait() -> None:
    rule = Retry(initial=1.0, factor=2.0, max=5.0, jitter=True)
    bounds: list[tuple[float, float]] = []
    waits = [delay(rule, n, lambda low, high: bounds.append((low, high)) or high / 2) for n in range(1, 6)]
    assert bounds == [(0, 1.0), (0, 2.0), (0, 4.0), (0, 5.0), (0, 5.0)]
    assert waits == [0.5, 1.0, 2.0, 2.5, 2.5]
    assert delay(Retry(initial=1.0, factor=10.0, max=60.0), 10_000) == 60.0  # no float overflow


def test_retries_end_after_max_attempts_and_the_error_fails_the_run(tmp_path: Path) -> None:
    checked = checked_flow(tmp_path, """\
flowrun: 1
name: GivesUp
tools: [flaky]
steps:
  call:
    kind: process
    tool: flaky
    arguments: {fails: 5}
    retry: {max_attempts: 3, on: [tool_error]}
    next: done
  done:
    kind: terminal
    output: "{{ steps.call.output.call }}"
""")
    kernel = kernel_on(tmp_path, checked, [])
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FAILED
    assert "service unavailable (call 3)" in (outcome.error or "")
    assert kernel.sleep.waits == [1.0, 2.0]
    assert [t.error is not None for t in kernel.storage.rows(ToolCallRow)] == [True, True, True]


def test_a_flaky_tool_succeeds_on_a_retry(tmp_path: Path) -> None:
    checked = checked_flow(tmp_path, """\
flowrun: 1
name: Flaky
tools: [flaky]
steps:
  call:
    kind: process
    tool: flaky
    arguments: {fails: 2}
    retry: {on: [tool_error], max_attempts: 3, backoff: {initial: 100ms}}
    next: done
  done:
    kind: terminal
    output: "{{ steps.call.output.call }}"
""")
    kernel = kernel_on(tmp_path, checked, [])
    outcome = go(kernel, checked)
    assert (outcome.status, outcome.answer) == (RunStatus.FINISHED, 3)
    assert kernel.sleep.waits == [0.1, 0.2]
    assert [t.error_kind for t in kernel.storage.rows(ToolCallRow)] == ["tool_error", "tool_error", None]


def test_the_first_matching_rule_applies_and_each_counts_its_own_tries(tmp_path: Path) -> None:
    checked = checked_flow(tmp_path, f"""\
flowrun: 1
name: Rules
tools: [flaky]
steps:
  call:
    kind: process
    tool: flaky
    arguments: {{fails: 1}}
    output_schema: {json.dumps(NUMBER)}
    retry:
      - {{on: [bad_output], max_attempts: 2, backoff: {{initial: 5s}}}}
      - {{on: [tool_error, bad_output], max_attempts: 9, backoff: {{initial: 1s}}}}
    next: done
  done:
    kind: terminal
    output: "{{{{ steps.call.output.n }}}}"
""")
    # try 1: the tool fails (rule 2); try 2: the answer fails twice (rule 1, its first retry); try 3: it fits
    kernel = kernel_on(tmp_path, checked, [{"key": "call", "text": "no", "times": 2},
                                           {"key": "call", "text": '{"n": 4}'}])
    outcome = go(kernel, checked)
    assert (outcome.status, outcome.answer) == (RunStatus.FINISHED, 4), outcome.error
    assert kernel.sleep.waits == [1.0, 5.0]


CATCHING = """\
flowrun: 1
name: Catching
tools: [flaky, nap]
agents: [child]
limits: {{max_model_calls: 1}}
steps:
  first:
    kind: process
    instruction: Say something.
    next: risky
  risky:
    %s
    catch: {{{kind}: fallback}}
    next: done
  fallback:
    kind: terminal
    output: "{{{{ error.kind }}}} at {{{{ error.step }}}}: {{{{ error.message }}}}"
  done:
    kind: terminal
    output: fine
"""
CHILD = f"""\
flowrun: 1
name: Child
steps:
  answer:
    kind: terminal
    instruction: Give a number.
    output_schema: {json.dumps(NUMBER)}
"""
RISKY = {
    ErrorKind.BAD_OUTPUT: ("kind: process\n    instruction: Give a number.\n"
                           f"    output_schema: {json.dumps(NUMBER)}"),
    ErrorKind.TOOL_ERROR: "kind: process\n    tool: flaky\n    arguments: {fails: 1}",
    ErrorKind.TOOL_TIMEOUT: "kind: process\n    tool: nap\n    arguments: {seconds: 2}",
    ErrorKind.STEP_TIMEOUT: "kind: process\n    tool: nap\n    arguments: {seconds: 0.25}\n    timeout: 50ms",
    ErrorKind.LIMIT: "kind: process\n    instruction: Say more.",
    ErrorKind.CHILD_FAILED: "kind: agent\n    flow: child",
    ErrorKind.MODEL_UNAVAILABLE: "kind: process\n    instruction: Say more.",
    # another agent's memories, which no privilege group lets it read
    ErrorKind.ACCESS_DENIED: "kind: process\n    instruction: Say more.\n    recall: {query: more, from: [Stranger]}",
    ErrorKind.INPUT_TIMEOUT: "kind: input\n    prompt: Anything to add?\n    timeout: 1h",  # nobody answers
}


class Unavailable(ScriptedBackend):
    """Answers from its cassette until `down` is set, then cannot be reached."""

    down = False

    async def generate(self, request: Request, on_token: Any, resume: Any = None) -> Result:
        if self.down:
            raise ModelUnavailable("connection refused")
        Unavailable.down = "Say something" in request.messages[-1]["content"]
        return await super().generate(request, on_token, resume)


def test_every_kind_of_error_is_caught_in_a_test() -> None:
    assert set(RISKY) == set(ErrorKind)


@pytest.mark.parametrize("kind", list(RISKY), ids=str)
def test_catch_routes_each_kind_of_error_to_its_step(tmp_path: Path, kind: ErrorKind) -> None:
    (tmp_path / "child.yaml").write_text(CHILD)
    text = CATCHING.format(kind=kind) % RISKY[kind]
    if kind != ErrorKind.LIMIT:
        text = text.replace("limits: {max_model_calls: 1}\n", "")
    if kind != ErrorKind.CHILD_FAILED:
        text = text.replace("agents: [child]\n", "")
    checked = checked_flow(tmp_path, text)
    responses = [{"key": "first", "text": "hello"}, {"text": "not a number", "times": 4}]
    Unavailable.down = False
    backend = Unavailable.from_responses(responses) if kind == ErrorKind.MODEL_UNAVAILABLE else None
    kernel = kernel_on(tmp_path, checked, responses, backend)
    if kind == ErrorKind.INPUT_TIMEOUT:
        async def too_late(run: str, question: Any) -> Answer:
            return Answer(timed_out=True)

        kernel.answerer = too_late
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FINISHED, outcome.error
    assert outcome.answer.startswith(f"{kind} at risky: "), outcome.answer
    found = record(kernel.storage, outcome.run_id)
    risky = next(s for s in found.steps if s.step == "risky")
    assert (risky.output, risky.branch, risky.error["kind"]) == (None, f"catch:{kind}", kind)
    assert [s.step for s in found.steps] == ["first", "risky", "fallback"]


def test_catch_any_takes_the_kinds_not_named_and_an_error_not_caught_fails_the_run(tmp_path: Path) -> None:
    text = CATCHING.format(kind="tool_timeout") % RISKY[ErrorKind.TOOL_ERROR]
    text = text.replace("limits: {max_model_calls: 1}\n", "").replace("agents: [child]\n", "")
    checked = checked_flow(tmp_path, text)
    kernel = kernel_on(tmp_path, checked, [{"key": "first", "text": "hello"}])
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FAILED and "service unavailable" in (outcome.error or "")
    anything = checked_flow(tmp_path, text.replace("{tool_timeout: fallback}", "{tool_timeout: done, any: fallback}"),
                            "any.yaml")
    kernel = kernel_on(tmp_path / "again", anything, [{"key": "first", "text": "hello"}])
    outcome = go(kernel, anything)
    assert outcome.answer.startswith("tool_error at risky: "), outcome.answer


def test_an_error_of_no_kind_is_neither_retried_nor_caught(tmp_path: Path) -> None:
    checked = checked_flow(tmp_path, """\
flowrun: 1
name: NoKind
inputs:
  n: {type: integer}
steps:
  risky:
    kind: process
    output: "{{ 1 // inputs.n }}"
    retry: {max_attempts: 3}
    catch: {any: fallback}
    next: done
  fallback:
    kind: terminal
    output: caught
  done:
    kind: terminal
    output: "{{ steps.risky.output }}"
""")
    kernel = kernel_on(tmp_path, checked, [])
    outcome = go(kernel, checked, {"n": 0})
    assert outcome.status == RunStatus.FAILED and "cannot be rendered" in (outcome.error or "")
    assert kernel.sleep.waits == []


def test_a_retry_calls_no_tool_again_whose_result_came_and_asks_the_model_afresh(tmp_path: Path) -> None:
    checked = checked_flow(tmp_path, f"""\
flowrun: 1
name: Reuse
tools: [counted]
steps:
  call:
    kind: process
    tool: counted
    arguments: {{x: 3}}
    instruction: State the count.
    output_schema: {json.dumps(NUMBER)}
    retry: {{on: [bad_output], max_attempts: 2}}
    next: done
  done:
    kind: terminal
    output: "{{{{ steps.call.output.n }}}}"
""")
    kernel = kernel_on(tmp_path, checked, [{"key": "call", "text": "wrong", "times": 2},
                                           {"key": "call", "text": '{"n": 1}'}])
    outcome = go(kernel, checked)
    assert (outcome.status, outcome.answer) == (RunStatus.FINISHED, 1), outcome.error
    # the tool, which is not idempotent, ran once; the model was asked three times, none answered twice
    assert (tmp_path / "workspaces" / outcome.run_id / "counted").read_text() == "1"
    assert len(kernel.storage.rows(ToolCallRow)) == 1
    assert model_calls(kernel.storage) == ["call", "call", "call"]


MAPPED = f"""\
flowrun: 1
name: Mapped
steps:
  each:
    kind: map
    items: "[1, 2, 3]"
    retry: {{on: [child_failed], max_attempts: 2}}
    steps:
      solve:
        kind: terminal
        instruction: Solve {{{{ item }}}}.
        output_schema: {json.dumps(NUMBER)}
    next: done
  done:
    kind: terminal
    output: "{{{{ steps.each.output }}}}"
"""


def test_a_retried_map_runs_again_only_the_items_that_did_not_finish(tmp_path: Path) -> None:
    checked = checked_flow(tmp_path, MAPPED.replace("kind: map", "kind: map\n    max_concurrency: 1"))
    # item 1 fails its try (twice no JSON), and its failure cancels item 2 before it starts
    responses = [{"key": "each[0].solve", "text": '{"n": 10}'}, {"key": "each[1].solve", "text": "no", "times": 2},
                 {"key": "each[1].solve", "text": '{"n": 20}'}, {"key": "each[2].solve", "text": '{"n": 30}'}]
    kernel = kernel_on(tmp_path, checked, responses)
    outcome = go(kernel, checked)
    solved = [{"n": 10}, {"n": 20}, {"n": 30}]
    assert (outcome.status, outcome.answer) == (RunStatus.FINISHED, solved), outcome.error
    assert sorted(model_calls(kernel.storage)) == ["each[0].solve", "each[1].solve", "each[1].solve",
                                                   "each[1].solve", "each[2].solve"]
    children = {(c.run.branch, c.run.attempt): c.run for c in record(kernel.storage, outcome.run_id).children}
    assert children[("1", None)].status == RunStatus.FAILED and children[("1", 2)].status == RunStatus.FINISHED
    assert ("0", 2) not in children, "a finished item ran again"
    assert children[("1", 2)].id == child_id(Origin(outcome.run_id, "each", 1, "1", 2))

    replayed = asyncio.run(replay_run(record(kernel.storage, outcome.run_id), checked, file=checked.file))
    assert (replayed.outcome.status, replayed.outcome.answer) == (RunStatus.FINISHED, solved)
    assert replayed.differences == []


def test_a_resumed_run_reads_the_caught_error_back(tmp_path: Path) -> None:
    checked = checked_flow(tmp_path, """\
flowrun: 1
name: Resumed
tools: [flaky]
steps:
  risky:
    kind: process
    tool: flaky
    arguments: {fails: 9}
    catch: {tool_error: note}
    next: done
  note:
    kind: process
    instruction: "Explain {{ error.message }}."
    next: done
  done:
    kind: terminal
    output: "{{ steps.note.output }} / {{ error.kind }} / {{ error.step }}"
""")
    kernel = kernel_on(tmp_path, checked, [])  # no answer for `note`: the run fails there
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FAILED
    found = stopped(kernel.storage, outcome.run_id)
    kernel = kernel_on(tmp_path, checked, [{"key": "note", "text": "it was down"}])
    again = asyncio.run(resume_run(kernel, checked.compiled, found, file=checked.file))
    assert (again.status, again.answer) == (RunStatus.FINISHED, "it was down / tool_error / risky"), again.error
    note = next(s for s in record(kernel.storage, outcome.run_id).steps if s.step == "note")
    assert "service unavailable (call 1)." in note.prompt[-1]["content"]
    assert [m["content"] for m in note.prompt if m["content"]] == [note.prompt[-1]["content"]], \
        "the caught step is no progress of the run's"


def test_a_step_timeout_stops_the_step_and_retries_it(tmp_path: Path) -> None:
    checked = checked_flow(tmp_path, """\
flowrun: 1
name: Slow
tools: [nap]
steps:
  slow:
    kind: process
    tool: nap
    arguments: {seconds: 0.25}
    timeout: 50ms
    retry: {on: [step_timeout], max_attempts: 2}
    next: done
  done:
    kind: terminal
    output: "{{ steps.slow.output.slept }}"
""")
    kernel = kernel_on(tmp_path, checked, [])
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FAILED
    assert "took longer than its timeout of 0.05 s" in (outcome.error or "")
    assert kernel.sleep.waits == [1.0]
    assert len(kernel.storage.rows(ToolCallRow)) == 2  # each try's call, stopped
    (run,) = kernel.storage.rows(RunRow)
    assert run.finished - run.created < 2


class FlakyRates(JSONHandler):
    """A rates service that fails its first `failures` requests with 503, then answers."""

    failures = 2
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        FlakyRates.asked.append(self.path)
        if len(FlakyRates.asked) <= FlakyRates.failures:
            self.send_error(503, "Service Unavailable")
            return
        self.reply({"rate": 0.9, "date": "2026-11-30"})


@pytest.mark.parametrize("failures", [2, 5, 9], ids=["up on its third request", "up on the flow's retry", "down"])
def test_the_currency_example_retries_the_rates_service_then_falls_back(tmp_path: Path, failures: int) -> None:
    """Each call tries the service three times (engine.kernel.network), and the flow's `retry` calls it three
    times: a service down for longer than that is caught, and the quote made from the reference table."""
    FlakyRates.failures, FlakyRates.asked = failures, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyRates)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        db = tmp_path / "runs.db"
        request = "request=Convert 200 euros to US dollars."
        code, out, err = cli("run", str(FLOWS / "currency_quote.yaml"), "-i", request,
                             "--backend", "scripted", "--cassette", cassette(tmp_path, "responses: []\n"),
                             "--db", str(db), "--json", env={"RATES_URL": f"http://127.0.0.1:{server.server_port}/"})
    finally:
        server.shutdown()
    assert code == 0, err
    answer = json.loads(out)["answer"]
    assert len(FlakyRates.asked) == min(failures + 1, 9) and FlakyRates.asked[0] == "/?base=EUR&quote=USD"
    if failures < 9:
        assert answer == {"amount": 200, "from": "EUR", "to": "USD", "rate": 0.9, "converted": 180.0,
                          "as_of": "2026-11-30", "source": "live"}
    else:
        assert answer["source"] == "reference" and "answered 503 Service Unavailable after 3 tries" in answer["note"]
    calls = [c.error_kind for c in Storage(f"sqlite:///{db}").rows(ToolCallRow) if c.tool == "exchange_rate"]
    assert calls == {2: [None], 5: ["tool_error", None], 9: ["tool_error"] * 3}[failures]


def test_a_step_timeout_stops_the_generation_it_cuts_off(tmp_path: Path) -> None:
    checked = checked_flow(tmp_path, """\
flowrun: 1
name: SlowModel
limits: {max_tokens: 40}
steps:
  ask:
    kind: process
    instruction: Say something.
    timeout: 300ms
    retry: {on: [step_timeout], max_attempts: 2}
    next: done
  done:
    kind: terminal
    output: "{{ steps.ask.output }}"
""")
    # 60 tokens at 50 ms would hold the one slot for 3 s: the retry got it only if the first was stopped
    backend = ScriptedBackend.from_responses([{"key": "ask", "text": " ".join(["word"] * 60)},
                                              {"key": "ask", "text": "short"}], token_delay=0.05, slots=1)
    kernel = kernel_on(tmp_path, checked, [], backend)

    async def main() -> RunOutcome:
        outcome = await run_flow(kernel, checked.compiled, {}, file=checked.file)
        await asyncio.sleep(0.5)  # a generation left going would go on generating meanwhile
        return outcome

    outcome = asyncio.run(main())
    assert (outcome.status, outcome.answer) == (RunStatus.FINISHED, "short"), outcome.error
    cut = [c for c in kernel.storage.rows(SyscallRow) if c.key == "ask" and c.error]
    assert len(cut) == 1 and cut[0].tokens < 12  # stopped within a token of its step's timeout
    assert kernel.scheduler.running == 0 and outcome.run_id not in kernel.scheduler.generated


def test_a_tool_call_a_timeout_stopped_is_no_result_to_give_back(tmp_path: Path) -> None:
    flow = """\
flowrun: 1
name: SlowTool
tools: [slow_once]
steps:
  call:
    kind: process
    tool: slow_once
    arguments: {x: 1}
    timeout: 1s
    retry: {on: [step_timeout], max_attempts: %d}
    next: done
  done:
    kind: terminal
    output: "{{ steps.call.output.call }}"
"""
    checked = checked_flow(tmp_path, flow % 2)
    kernel = kernel_on(tmp_path, checked, [])
    outcome = go(kernel, checked)
    assert (outcome.status, outcome.answer) == (RunStatus.FINISHED, 2), outcome.error
    first, second = kernel.storage.rows(ToolCallRow)
    # it may or may not have happened (not idempotent): pending, with why it has no result
    assert (first.result, first.error, first.pending) == (None, "the call was stopped before it returned", True)
    assert (second.result, second.error) == ({"x": 1, "call": 2}, None)
    replayed = asyncio.run(replay_run(record(kernel.storage, outcome.run_id), checked, file=checked.file))
    assert (replayed.outcome.answer, replayed.differences) == (2, [])

    # a run that failed with its only try stopped is not resumed on a null result: the call is unrecorded
    checked = checked_flow(tmp_path / "once", flow % 1)
    kernel = kernel_on(tmp_path / "once", checked, [])
    outcome = go(kernel, checked)
    assert outcome.status == RunStatus.FAILED
    found = stopped(kernel.storage, outcome.run_id)
    assert [t.tool for t in found.unrecorded] == ["slow_once"] and not found.journal.tools


def test_validate_warns_of_retries_around_side_effects_refuses_catch_labels_and_long_waits(tmp_path: Path) -> None:
    text = """\
flowrun: 1
name: Checked
tools: [counted]
inputs: {x: {type: string}}
steps:
  each:
    kind: map
    items: "[1, 2]"
    retry: {on: [child_failed], backoff: {max: %s}}
    steps:
      count: {kind: process, tool: counted, arguments: {x: "{{ item }}"}, next: said}
      said: {kind: terminal, output: "{{ steps.count.output.call }}"}
    next: pick
  pick:
    kind: decision
    question: Which?
    decide: "{{ inputs.x }}"
    branches: {%s: done, other: done}
  done: {kind: terminal, output: done}
"""
    def found(wait: str, label: str) -> list[tuple[str, str]]:
        checked = check_flow_text(text % (wait, label), str(tmp_path / "checked.yaml"),
                                  load_tools([tmp_path / "tools"]).tools)
        return [(d.code, d.message) for d in checked.diagnostics]

    checked_flow(tmp_path, "flowrun: 1\nname: Tools\nsteps: {done: {kind: terminal, output: x}}\n")  # the tools
    assert found("1h", "mine") == [("FR134", "step 'each' retries child_failed around 'counted', which is not "
                                             "idempotent: a call that failed or was stopped part-way is made again; "
                                             "make the tool idempotent, or retry only other kinds of error")]
    assert sorted(code for code, _ in found("2h", '"catch:any"')) == ["FR003", "FR003", "FR134"]
