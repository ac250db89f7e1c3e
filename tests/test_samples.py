"""Self-consistency (`samples: N`, `vote: majority`) and repetition control (`repeat_penalty`, the DRY sampler)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.console import run_text
from engine.flow.validate import CheckedFlow, check_flow_text
from engine.interpreter.replay import replay_run
from engine.interpreter.resume import resume_run, stopped
from engine.interpreter.runs import LLM_KINDS, record, steps_of
from engine.interpreter.setup import kernel_for
from engine.interpreter.vote import Unfit, majority, sample_options
from engine.interpreter.walk import RunOutcome, run_flow
from engine.kernel.journal import Journal, RecordedAnswer
from engine.kernel.kernel import Kernel
from engine.kernel.retry import Backoff
from engine.kernel.storage import Storage
from engine.kernel.tables import SyscallRow, ToolCallRow
from engine.llm.base import ModelUnavailable, OnToken, Request, Result, Snapshot
from engine.llm.scripted import ScriptedBackend

FLOW = """\
flowrun: 1
name: Voter
description: A test agent.
inputs:
  question: {type: string}
tools: [calculator]
steps:
  work:
    kind: process
    tool: calculator
    samples: 3
    instruction: Compute {{ inputs.question }}.
    next: judge
  judge:
    kind: decision
    question: Is {{ steps.work.output }} right?
    samples: 3
    vote: majority
    temperature: 0.9
    branches: {yes: answer, no: answer}
  answer:
    kind: terminal
    samples: 4
    output_schema:
      type: object
      properties: {value: {type: number}, unit: {type: string}}
      required: [value, unit]
    instruction: State the result.
"""

ANSWER_SCHEMA = ("    output_schema:\n      type: object\n"
                 "      properties: {value: {type: number}, unit: {type: string}}\n      required: [value, unit]\n")
ANSWERS = [
    # sample 2's arguments are sample 1's written another way: the same pick
    {"key": "work#1", "text": '{"tool": "calculator", "arguments": {"expression": "6*7"}}'},
    {"key": "work#2", "text": '{"arguments": {"expression": "6*7"}, "tool": "calculator"}'},
    {"key": "work#3", "text": '{"tool": "calculator", "arguments": {"expression": "6+7"}}'},
    {"key": "judge#1", "text": "no"},
    {"key": "judge", "text": "yes", "times": 2},  # a step's key serves those of its samples not named
    {"key": "answer#1", "text": '{"value": 42, "unit": "m"}'},
    {"key": "answer#2", "text": '{"unit": "m",  "value": 42}'},
    {"key": "answer#3", "text": '{"value": "lots"}'},  # does not match the schema: not counted
    {"key": "answer#4", "text": '{"value": 13, "unit": "m"}'},
]


class Watched(ScriptedBackend):
    """A scripted backend that keeps every request, counts the generations in flight at once, and can make
    chosen keys wait (to finish out of order) or fail once as an unavailable model would."""

    def __init__(self, responses: list[dict[str, Any]], *, slots: int = 1, slow: dict[str, float] | None = None,
                 unavailable: set[str] | None = None) -> None:
        scripted = ScriptedBackend.from_responses(responses, slots=slots)
        super().__init__(scripted.entries, slots=slots)
        self.requests: list[Request] = []
        self.slow, self.unavailable = slow or {}, set(unavailable or ())
        self.running = self.most = 0

    async def generate(self, request: Request, on_token: OnToken, resume: Snapshot | None = None) -> Result:
        self.requests.append(request)
        if request.key in self.unavailable:
            self.unavailable.discard(request.key)
            raise ModelUnavailable("the model went away")
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.slow.get(request.key, 0))
            return await super().generate(request, on_token, resume)
        finally:
            self.running -= 1


def checked(text: str = FLOW) -> CheckedFlow:
    found = check_flow_text(text, "voter.yaml", tools=_tools())
    assert found.ok, [d.message for d in found.diagnostics]
    return found


def _tools() -> dict[str, Any]:
    from engine.flow.manifest import load_tools

    return load_tools([]).tools


def kernel_on(backend: ScriptedBackend, db: Path, flow: CheckedFlow) -> Kernel:
    kernel = kernel_for([flow], backend, Storage(f"sqlite:///{db}"), workspaces=db.parent / "workspaces")
    kernel.retry = Backoff(attempts=1)
    return kernel


def run_voter(backend: ScriptedBackend, db: Path, flow: CheckedFlow | None = None) -> tuple[RunOutcome, Kernel]:
    flow = flow or checked()
    kernel = kernel_on(backend, db, flow)
    outcome = asyncio.run(run_flow(kernel, flow.compiled, {"question": "6 times 7"}, file="voter.yaml"))
    return outcome, kernel


def sample_texts(storage: Storage, run_id: str) -> dict[str, str | None]:
    return {c.key or "": c.text for c in storage.of_runs(SyscallRow, [run_id]) if c.kind in LLM_KINDS}


def test_each_step_keeps_the_answer_most_of_its_samples_give(tmp_path: Path) -> None:
    backend = Watched(ANSWERS)
    outcome, kernel = run_voter(backend, tmp_path / "runs.db")
    assert outcome.status == "finished", outcome.error
    work, judge, answer = steps_of(kernel.storage, outcome.run_id)
    # the tool: called once, with the arguments two samples of three gave
    calls = kernel.storage.rows(ToolCallRow)
    assert [(c.tool, c.arguments) for c in calls] == [("calculator", {"expression": "6*7"})]
    assert work.output == {"expression": "6*7", "result": 42}
    assert work.vote == [{"vote": "majority", "samples": 3, "winner": 1, "counts": {"1": 2, "3": 1}, "unfit": []}]
    assert judge.branch == "yes" and judge.vote[0]["winner"] == 2 and judge.vote[0]["counts"] == {"2": 2, "1": 1}
    # data compared as canonical JSON; the sample that does not match the schema is left out
    assert outcome.answer == {"value": 42, "unit": "m"}
    assert answer.vote[0]["counts"] == {"1": 2, "4": 1} and answer.vote[0]["unfit"] == [3]
    # every sample is recorded under its own key, with its text; the record holds no answer twice
    texts = sample_texts(kernel.storage, outcome.run_id)
    assert set(texts) == {f"{s}#{n}" for s, count in (("work", 3), ("judge", 3), ("answer", 4))
                          for n in range(1, count + 1)}
    assert texts["answer#3"] == '{"value": "lots"}' and texts["judge#1"] == "no"
    assert "lots" not in json.dumps(answer.vote)


def test_samples_run_at_once_at_the_sample_temperature(tmp_path: Path) -> None:
    flow = checked(FLOW.replace("steps:\n", "model: {options: {temperature: 0, top_k: 1, seed: 7}}\nsteps:\n", 1))
    backend = Watched(ANSWERS, slots=4)
    outcome, _ = run_voter(backend, tmp_path / "runs.db", flow)
    assert outcome.status == "finished", outcome.error
    assert backend.most == 4  # the terminal's four samples were all on the model at once
    options = {r.key: r.options for r in backend.requests}
    assert options["judge#1"]["temperature"] == 0.9 and options["work#1"]["temperature"] == 0.7
    # a seed moved on per sample, and no greedy top_k: either would make every sample the same
    assert [options[f"answer#{n}"]["seed"] for n in range(1, 5)] == [8, 9, 10, 11]
    assert not any("top_k" in o for o in options.values())


def test_a_tie_goes_to_the_first_sample_drawn_not_the_first_to_finish(tmp_path: Path) -> None:
    flow = checked(FLOW.replace("samples: 3\n    vote: majority", "samples: 2\n    vote: majority"))
    answers = [a for a in ANSWERS if not a["key"].startswith("judge")]
    answers += [{"key": "judge#1", "text": "no"}, {"key": "judge#2", "text": "yes"}]
    backend = Watched(answers, slots=2, slow={"judge#1": 0.2})
    outcome, kernel = run_voter(backend, tmp_path / "runs.db", flow)
    assert outcome.status == "finished", outcome.error
    finished = sorted((c for c in kernel.storage.rows(SyscallRow) if (c.key or "").startswith("judge")),
                      key=lambda c: c.finished or 0)
    assert [c.key for c in finished] == ["judge#2", "judge#1"]
    judge = steps_of(kernel.storage, outcome.run_id)[1]
    assert judge.branch == "no" and judge.vote[0]["counts"] == {"1": 1, "2": 1}


def test_free_text_votes_on_the_exact_text(tmp_path: Path) -> None:
    flow = checked(FLOW.replace(ANSWER_SCHEMA, ""))
    answers = [a for a in ANSWERS if not a["key"].startswith("answer")]
    answers += [{"key": "answer#1", "text": "42 m"}, {"key": "answer#2", "text": "42 metres"},
                {"key": "answer#3", "text": " 42 metres\n"}, {"key": "answer#4", "text": "42 M"}]
    outcome, _ = run_voter(Watched(answers), tmp_path / "runs.db", flow)
    assert outcome.status == "finished" and outcome.answer == "42 metres"


def test_a_step_none_of_whose_samples_can_be_counted_fails_saying_why(tmp_path: Path) -> None:
    answers = [a for a in ANSWERS if not a["key"].startswith("answer")] + [{"key": "answer", "text": "no JSON",
                                                                             "times": 4}]
    outcome, _ = run_voter(Watched(answers), tmp_path / "runs.db")
    assert outcome.status == "failed"
    assert "step answer: none of its 4 samples gave an answer that can be counted" in (outcome.error or "")


def test_a_run_stopped_among_its_samples_resumes_with_those_it_got(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    # judge#1 fails while its siblings are still on the model
    first = Watched(ANSWERS, slots=3, slow={"judge#2": 0.1, "judge#3": 0.1}, unavailable={"judge#1"})
    outcome, kernel = run_voter(first, db)
    assert outcome.status == "paused", outcome.error
    got = sample_texts(kernel.storage, outcome.run_id)
    assert got["judge#2"] == got["judge#3"] == "yes" and got["judge#1"] is None
    kernel.storage.close()

    storage = Storage(f"sqlite:///{db}")
    found = stopped(storage, outcome.run_id)
    again = Watched(ANSWERS)
    again.skip(found.answered)  # as `flowrun runs resume` does for a cassette
    kernel = kernel_for([checked()], again, storage, workspaces=tmp_path / "workspaces")
    resumed = asyncio.run(resume_run(kernel, checked().compiled, found, file="voter.yaml"))
    assert resumed.status == "finished", resumed.error
    asked = Counter(r.key for r in again.requests)
    assert asked["judge#1"] == 1 and asked["judge#2"] == asked["judge#3"] == 0 and asked["work#1"] == 0
    judge = steps_of(storage, resumed.run_id)[1]
    assert judge.branch == "yes" and judge.vote[0]["counts"] == {"2": 2, "1": 1}


def test_a_replay_reproduces_the_vote_whatever_order_the_samples_finished_in(tmp_path: Path) -> None:
    backend = Watched(ANSWERS, slots=4, slow={"answer#1": 0.1, "judge#1": 0.1, "work#1": 0.1})
    outcome, kernel = run_voter(backend, tmp_path / "runs.db")
    assert outcome.status == "finished", outcome.error
    recorded = record(kernel.storage, outcome.run_id)
    replay = asyncio.run(replay_run(recorded, checked(), file="voter.yaml"))
    assert replay.differences == [] and replay.outcome.status == "finished"
    assert [s.vote for s in replay.steps] == [s.vote for s in recorded.steps]


PICKER = """\
flowrun: 1
name: Picker
description: A test agent.
tools: [calculator]
steps:
  work:
    kind: process
    tools: [calculator]
    samples: 3
    instruction: Compute 6 times 7, and say it as data.
    output_schema: {type: object, properties: {result: {type: number}}, required: [result]}
    next: done
  done:
    kind: terminal
    instruction: Say the result.
"""


def test_a_step_that_may_pick_a_tool_votes_on_the_pick_the_call_and_the_answer(tmp_path: Path) -> None:
    flow = checked(PICKER)
    call = '{"tool": "calculator", "arguments": {"expression": "6*7"}}'
    answers = [  # in the order each sample asks: its choice of tool, its call, its answer
        {"key": "done", "text": "42"},
        {"key": "work#1", "text": '"none"'}, {"key": "work#1", "text": call},
        {"key": "work#1", "text": '{"result": 42}'},
        {"key": "work#2", "text": '"calculator"'}, {"key": "work#2", "text": '{"tool": "calculator"}'},
        {"key": "work#2", "text": '{"result": 41}'},
        {"key": "work#3", "text": '"calculator"'}, {"key": "work#3", "text": call},
        {"key": "work#3", "text": '{"result": 42}'},
    ]
    kernel = kernel_on(Watched(answers), tmp_path / "runs.db", flow)
    outcome = asyncio.run(run_flow(kernel, flow.compiled, {}, file="picker.yaml"))
    assert outcome.status == "finished", outcome.error
    step = steps_of(kernel.storage, outcome.run_id)[0]
    assert step.output == {"result": 42}
    assert [(v["winner"], v["counts"], v["unfit"]) for v in step.vote] == [
        (2, {"2": 2, "1": 1}, []),  # calculator, not none
        (1, {"1": 2}, [2]),  # sample 2's call has no arguments: not counted
        (1, {"1": 2, "2": 1}, []),
    ]
    assert [(c.tool, c.arguments) for c in kernel.storage.rows(ToolCallRow)] == [("calculator", {"expression": "6*7"})]
    shown = run_text(record(kernel.storage, outcome.run_id))
    assert "2 of 3 samples agreed (sample 2)" in shown and "2 of 3 samples agreed (sample 1), 1 not counted" in shown


def test_samples_of_one_step_take_their_own_recorded_answers_in_any_order() -> None:
    journal = Journal(strict=True)
    journal.answers.extend(RecordedAnswer(key, text) for key, text in
                           (("s#1", "a"), ("s#2", "b"), ("s#3", "c"), ("t", "d")))
    assert [journal.answer(k) for k in ("s#3", "s#1", "s#2", "t")] == ["c", "a", "b", "d"]
    lenient = Journal()
    lenient.answers.extend(RecordedAnswer(key, text) for key, text in (("s#1", "a"), ("s#3", "c"), ("t", "d")))
    assert lenient.answer("s#2") is None and len(lenient.answers) == 3  # not recorded: its siblings keep theirs
    assert lenient.answer("s#3") == "c" and lenient.answer("s#1") == "a" and lenient.answer("t") == "d"


def test_majority_counts_equal_data_once_and_breaks_ties_by_sample_order() -> None:
    tally = majority([{"a": 1, "b": [2]}, Unfit("no"), "x", {"b": [2], "a": 1}, "x"])
    assert tally is not None and tally.winner == 0 and tally.counts == {1: 2, 3: 2} and tally.unfit == [2]
    assert majority([Unfit("no")]) is None
    assert sample_options({"temperature": 0, "top_k": 40}, None, 3) == {"temperature": 0.7, "top_k": 40}


@pytest.mark.parametrize(("fields", "at", "message"), [
    ("vote: majority", (14, 3), "steps.judge: `vote` and `temperature` go with `samples: N`"),
    ("temperature: 0.5", (14, 3), "steps.judge: `vote` and `temperature` go with `samples: N`"),
    ("samples: 1", (17, 14), "steps.judge.samples: 1 is less than the minimum of 2"),
    ("samples: 16", (17, 14), "steps.judge.samples: 16 is greater than the maximum of 15"),
    ("samples: 3\n    temperature: 0", (18, 18), "steps.judge.temperature: 0 is less than or equal to the minimum"),
    ("samples: 3\n    vote: best", (18, 11), "steps.judge.vote: 'best' is not one of: majority"),
    ("samples: 3\n    decide: \"{{ 'yes' }}\"", (14, 3), "`decide` decides from data with no model call"),
])
def test_bad_sampling_fields_are_schema_errors_at_their_line(fields: str, at: tuple[int, int], message: str) -> None:
    text = FLOW.replace("    samples: 3\n    vote: majority\n    temperature: 0.9\n", f"    {fields}\n")
    found = check_flow_text(text, "voter.yaml", tools=_tools())
    (problem,) = found.diagnostics
    assert (problem.code, (problem.line, problem.column)) == ("FR003", at) and message in problem.message


REPEATER = "Continue the sequence: 1.1.1.1.1.1.1.1"
VERSION = {"type": "object", "properties": {"version": {"type": "string"}}, "required": ["version"]}


def test_repetition_options_reach_the_backend_from_the_flow(tmp_path: Path) -> None:
    options = "{repeat_penalty: 1.05, repeat_last_n: 32, dry_multiplier: 0.5, dry_allowed_length: 4}"
    flow = checked(FLOW.replace("steps:\n", f"model: {{options: {options}}}\nsteps:\n", 1))
    backend = Watched(ANSWERS)
    assert run_voter(backend, tmp_path / "runs.db", flow)[0].status == "finished"
    assert all(r.options["repeat_penalty"] == 1.05 and r.options["dry_allowed_length"] == 4 for r in backend.requests)
    bad = check_flow_text(FLOW.replace("steps:\n", "model: {options: {dry_multiplier: -1}}\nsteps:\n", 1),
                          "voter.yaml", tools=_tools())
    assert [(d.code, d.line) for d in bad.diagnostics] == [("FR003", 7)]


def test_ollama_gets_the_repeat_penalty_and_no_dry_option_it_lacks() -> None:
    from engine.llm.ollama import OllamaBackend
    from tests.fake_ollama import FakeOllama

    fake = FakeOllama({"m": "one two"})
    try:
        backend = OllamaBackend("m", server=fake.url)
        options = {"repeat_penalty": 1.2, "repeat_last_n": 32, "dry_multiplier": 0.8, "dry_allowed_length": 3}
        result = asyncio.run(backend.generate(Request([{"role": "user", "content": "hi"}], options=options),
                                              lambda _: False))
        assert result.text == "one two"
        sent = fake.requests[-1]["options"]
        assert (sent["repeat_penalty"], sent["repeat_last_n"]) == (1.2, 32) and not any("dry" in k for k in sent)
    finally:
        fake.close()


@pytest.mark.slow
def test_the_embedded_model_stops_looping_with_its_default_dry_sampler() -> None:
    import re

    from engine.llm import models
    from engine.llm.embedded import EmbeddedBackend

    backend = EmbeddedBackend(models.resolve(models.DEFAULT_MODEL), slots=1, context=1024)
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": REPEATER}]

    def text(schema: dict[str, Any] | None = None, slice_tokens: int = 0, **options: Any) -> str:
        """The model's answer, suspended and resumed every `slice_tokens` tokens (0: never)."""
        request = Request(messages, schema=schema, options={"temperature": 0, "top_k": 1, "max_tokens": 48, **options})
        snapshot = None
        while True:
            counted = itertools.count(1)
            result = asyncio.run(backend.generate(request, lambda _, n=counted: next(n) == slice_tokens, snapshot))
            if result.snapshot is None:
                return result.text
            snapshot = result.snapshot

    loop = re.compile(r"(1\.){8}")
    assert loop.search(text(dry_multiplier=0)) and loop.search(text(VERSION, dry_multiplier=0))  # without DRY
    free, data = text(), text(VERSION)
    assert not loop.search(free), free
    assert not loop.search(data), data  # DRY acts under the schema's grammar too
    assert isinstance(json.loads(data)["version"], str)
    assert text(slice_tokens=8) == free  # DRY sees the resumed prompt's tokens as it saw them generated


def test_output_refuses_samples_where_it_asks_no_model_and_takes_the_voted_call_where_it_does(tmp_path: Path) -> None:
    no_call = FLOW.replace(ANSWER_SCHEMA + "    instruction: State the result.\n",
                           '    output: "{{ steps.work.output.result }}"\n')
    found = check_flow_text(no_call, "voter.yaml", tools=_tools())
    (problem,) = found.diagnostics
    assert (problem.code, problem.line, problem.column) == ("FR003", 21, 3) and "nothing to sample" in problem.message
    flow = checked(FLOW.replace("    next: judge\n", '    output: "{{ result.result }}"\n    next: judge\n'))
    outcome, kernel = run_voter(Watched(ANSWERS), tmp_path / "runs.db", flow)
    assert outcome.status == "finished", outcome.error
    work = steps_of(kernel.storage, outcome.run_id)[0]
    assert work.output == 42 and work.vote[0]["counts"] == {"1": 2, "3": 1}


def test_samples_on_a_step_that_asks_the_model_nothing_are_a_schema_error() -> None:
    fixed = FLOW.replace("    tool: calculator\n    samples: 3\n",
                         "    tool: calculator\n    arguments: {expression: '6*7'}\n    samples: 3\n")
    (problem,) = check_flow_text(fixed, "voter.yaml", tools=_tools()).diagnostics
    assert (problem.code, problem.line, problem.column) == ("FR003", 8, 3) and "nothing to sample" in problem.message
    restated = fixed.replace("    next: judge\n", "    output_schema: {type: object}\n    next: judge\n", 1)
    assert check_flow_text(restated, "voter.yaml", tools=_tools()).diagnostics == []  # the restatement is sampled
