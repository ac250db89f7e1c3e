"""A step's `output:` (its output built from data, with no model call for it) and `examples:` (few-shot turns in
its prompt): what validation reports, what a run on the scripted backend asks and keeps, and resume and replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.flow.validate import check_flow_text, load_flow
from engine.interpreter.runs import LLM_KINDS
from engine.kernel.storage import Storage
from engine.kernel.tables import StepRow, SyscallRow, ToolCallRow
from tests.test_interpreter import run, stored_steps
from tests.test_run_cli import cli, runs_of, steps_of


def diagnostics(text: str, tools: dict[str, Any]) -> set[tuple[int, int, str]]:
    return {(d.line, d.column, d.code) for d in check_flow_text(text, "flow.yaml", tools).diagnostics}


def model_calls(kernel: Any, step: str | None = None) -> list[SyscallRow]:
    return [c for c in kernel.storage.rows(SyscallRow) if c.kind in LLM_KINDS and step in (None, c.key)]


def flow_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    return path


# --- validation -------------------------------------------------------------------------------------------------

HEAD = """\
flowrun: 1
name: StepData
inputs:
  n: {type: integer}
tools: [calculator]
steps:
"""


def test_output_templates_are_checked_like_the_others_at_their_position(tools) -> None:
    text = HEAD + """\
  compute:
    kind: process
    instruction: Write 2 * {{ inputs.n }}.
    tool: calculator
    output: "{{ result.result }}"
    next: twice
  twice:
    kind: process
    output: "{{ result * 2 }}"
    next: bad
  bad:
    kind: process
    output: "{{ inputs.m }} and {{ inputs.n.__class__ }}"
    next: done
  done:
    kind: terminal
    output: "{{ steps.compute.output.value }} {{ steps.bad.output.value }}"
"""
    assert diagnostics(text, tools) == {
        (15, 13, "FR302"),  # `result` is only on a step with `tool`
        (19, 13, "FR302"), (19, 13, "FR305"),  # an unknown input; a Python internal
        (23, 13, "FR302"),  # `bad` gives text (not one expression), which has no fields; `compute`'s is data
    }


def test_instruction_is_optional_only_where_output_needs_no_model(tools) -> None:
    text = HEAD + """\
  compute:
    kind: process
    tool: calculator
    output: "{{ result.result }}"
    next: plain
  plain:
    kind: process
    next: done
  done:
    kind: terminal
    output: "{{ steps.compute.output }}"
"""
    found = check_flow_text(text, "flow.yaml", tools).diagnostics
    assert {(d.line, d.code) for d in found} == {(7, "FR003"), (12, "FR003")}
    assert all("missing required key 'instruction'" in d.message for d in found)


def test_output_with_a_choice_of_tools_is_its_own_error(tools) -> None:
    text = HEAD + """\
  compute:
    kind: process
    instruction: Compute if you must.
    tools: [calculator]
    output: "{{ steps.compute.output }}"
    next: done
  done:
    kind: terminal
    instruction: Answer.
"""
    assert diagnostics(text, tools) == {(11, 13, "FR107")}


def test_each_example_answer_is_checked_where_it_stands(tools) -> None:
    text = HEAD + """\
  parse:
    kind: process
    instruction: How many days?
    output_schema: {type: object, properties: {days: {type: integer}}, required: [days]}
    examples:
      - {input: Three days, answer: {days: 3}}
      - {input: A week, answer: {days: seven}}
    next: compute
  compute:
    kind: process
    instruction: Hours in the days.
    tool: calculator
    examples:
      - input: Hours in 2 days
        answer: {expression: "2 * 24"}
      - input: Hours in 3 days
        answer: {formula: "3 * 24"}
    next: long
  long:
    kind: decision
    question: Is it long?
    examples:
      - {input: 2 hours?, answer: "no"}
      - {input: 90 hours?, answer: maybe}
      - {input: 3 weeks?, answer: [yes]}
    branches: {"yes": done, "no": done}
  done:
    kind: terminal
    instruction: Say it.
    examples:
      - {input: Say 3, answer: It is 3 days.}
"""
    found = check_flow_text(text, "flow.yaml", tools).diagnostics
    assert {(d.line, d.column, d.code) for d in found} == {(13, 33, "FR108"), (23, 17, "FR108"),
                                                           (30, 36, "FR108"), (31, 35, "FR108")}
    messages = {d.line: d.message for d in found}
    assert messages[13].startswith("example 2 of step 'parse': ") and 'days: "seven" is not of type' in messages[13]
    assert "the arguments of calculator" in messages[23] and "'formula' was unexpected" in messages[23]
    assert "'maybe' is not one of the branch labels (yes, no)" in messages[30]


NO_TOOLS = HEAD.replace("tools: [calculator]\n", "")


def examples(n: int) -> str:
    """`n` examples of a step, as YAML lines of its `examples` list."""
    return "".join(f"      - {{input: q{i}, answer: a{i}}}\n" for i in range(n))


def test_examples_are_bounded_and_examples_no_call_uses_are_warned_about(tools) -> None:
    text = NO_TOOLS + f"""\
  work:
    kind: process
    instruction: Work.
    examples:
{examples(11)}    next: count
  count:
    kind: process
    output: "{{{{ visits.work }}}}"
    examples:
      - {{input: Count, answer: "1"}}
    next: done
  done:
    kind: terminal
    output: "{{{{ steps.count.output }}}}"
"""
    found = check_flow_text(text, "flow.yaml", tools).diagnostics
    assert {(d.line, d.code, d.severity.value) for d in found} == {(9, "FR003", "error"), (25, "FR109", "warning")}
    assert any("at most 10 examples" in d.message for d in found)


def test_examples_shown_lets_a_step_keep_a_bank_of_examples_and_is_itself_bounded(tools) -> None:
    text = NO_TOOLS + f"""\
  work:
    kind: process
    instruction: Work.
    examples_shown: SHOWN
    examples:
{examples(40)}    next: done
  done:
    kind: terminal
    instruction: Done.
    examples_shown: 2
"""
    assert diagnostics(text.replace("SHOWN", "3").replace("    examples_shown: 2\n", ""), tools) == set()
    found = check_flow_text(text.replace("SHOWN", "11"), "flow.yaml", tools).diagnostics
    assert {(d.line, d.code) for d in found} == {(9, "FR003"), (52, "FR003")}
    assert any("`examples_shown` picks among the step's `examples`" in d.message for d in found)


def test_the_shipped_flows_still_validate() -> None:
    code, out, _ = cli("validate", "flows/", "tools/")
    assert code == 0, out


# --- runs -------------------------------------------------------------------------------------------------------

COMPUTE = """\
flowrun: 1
name: Speed
description: You solve arithmetic.
inputs:
  problem: {type: string}
tools: [calculator]
steps:
  compute:
    kind: process
    instruction: Write the arithmetic for {{ inputs.problem }}.
    tool: calculator
"""
SPEED = COMPUTE + """\
OUTPUT
    next: answer
  answer:
    kind: terminal
    output: "{{ ANSWER }} m/s"
"""


def speed(tmp_path: Path, output: str, answer: str) -> Path:
    return flow_file(tmp_path, SPEED.replace("OUTPUT", output).replace("ANSWER", answer))


CALL = [{"key": "compute", "text": '{"tool": "calculator", "arguments": {"expression": "100 / 8"}}'}]


def test_a_terminal_with_output_answers_from_a_recorded_tool_result_with_no_model_call(tmp_path: Path) -> None:
    flow = speed(tmp_path, "", "steps.compute.output.result")  # compute keeps the tool's whole result
    outcome, kernel = run(flow, CALL, {"problem": "100 m in 8 s"}, tmp_path)
    assert outcome.status == "finished", outcome.error
    assert outcome.answer == "12.5 m/s"
    assert [c.kind for c in model_calls(kernel)] == ["call_tool"]  # compute's call only
    assert not model_calls(kernel, "answer")
    (done,) = [s for s in stored_steps(kernel, outcome) if s.step == "answer"]
    assert (done.output, done.prompt, done.tokens) == ("12.5 m/s", None, 0)


def test_a_tool_step_with_output_keeps_a_field_of_the_result_and_asks_nothing_more(tmp_path: Path) -> None:
    flow = speed(tmp_path, '    output: "{{ result.result }}"', "steps.compute.output")
    outcome, kernel = run(flow, CALL, {"problem": "100 m in 8 s"}, tmp_path)
    assert outcome.status == "finished", outcome.error
    compute = stored_steps(kernel, outcome)[0]
    assert compute.output == 12.5 and isinstance(compute.output, float)
    assert compute.tools[0]["result"] == {"expression": "100 / 8", "result": 12.5}
    assert [c.kind for c in model_calls(kernel)] == ["call_tool"]
    assert outcome.answer == "12.5 m/s"


VALUES = """\
flowrun: 1
name: Values
inputs:
  n: {type: integer}
  words: {type: string}
limits: {max_steps: 10}
steps:
  number:
    kind: process
    output: "{{ inputs.n * 2 }}"
    next: listed
  listed:
    kind: process
    output: "{{ inputs.words.split() }}"
    next: text
  text:
    kind: process
    instruction: Say n.
    output: "n is {{ inputs.n }}"
    next: record
  record:
    kind: process
    output: '{"n": {{ inputs.n }}, "words": {{ steps.listed.output | length }}}'
    output_schema:
      type: object
      properties: {n: {type: integer}, words: {type: integer}}
      required: [n, words]
    next: big
  big:
    kind: decision
    question: Is it big?
    decide: "{{ 'yes' if steps.number.output > 10 and steps.record.output.words == 3 else 'no' }}"
    branches: {"yes": done, "no": done}
  done:
    kind: terminal
    output: |
      {{ {"twice": steps.number.output, "first": steps.listed.output[0], "text": steps.text.output} }}
    output_schema: {type: object, required: [twice, first, text]}
"""


def test_one_expression_gives_its_value_other_templates_text_and_json_where_a_schema_asks(tmp_path: Path) -> None:
    outcome, kernel = run(flow_file(tmp_path, VALUES), [], {"n": 7, "words": "red green blue"}, tmp_path)
    assert outcome.status == "finished", outcome.error
    outputs = {s.step: s.output for s in stored_steps(kernel, outcome)}
    assert outputs == {"number": 14, "listed": ["red", "green", "blue"], "text": "n is 7",
                       "record": {"n": 7, "words": 3}, "big": "yes",
                       "done": {"twice": 14, "first": "red", "text": "n is 7"}}
    assert outcome.answer == outputs["done"]
    assert not model_calls(kernel)
    text = next(s for s in stored_steps(kernel, outcome) if s.step == "text")
    assert text.ask == "Say n." and next(s for s in stored_steps(kernel, outcome) if s.step == "number").ask == "number"


def test_an_output_that_does_not_fit_its_schema_fails_the_run_at_the_output_field(tmp_path: Path) -> None:
    wrong_type = VALUES.replace("properties: {n: {type: integer}", "properties: {n: {type: string}")
    outcome, kernel = run(flow_file(tmp_path, wrong_type), [], {"n": 7, "words": "a b c"}, tmp_path)
    assert outcome.status == "failed"
    assert outcome.error == (f"{tmp_path / 'flow.yaml'}:23:13: step record: its output does not fit its "
                             'output_schema: n: 7 is not of type "string"')
    assert [s.step for s in stored_steps(kernel, outcome)] == ["number", "listed", "text"]  # kept
    not_json = VALUES.replace(""""words": {{ steps.listed.output | length }}}'""", """words: many}'""")
    outcome, _ = run(flow_file(tmp_path, not_json), [], {"n": 7, "words": "a b c"}, tmp_path / "again")
    assert outcome.status == "failed" and ":23:13: step record: its output does not fit" in outcome.error
    assert "it is not JSON" in outcome.error


def test_an_output_value_is_bounded_and_must_be_json_data(tmp_path: Path) -> None:
    for output, said in (("{{ inputs.words * 10 ** 6 }}", "would make at least 14,000,000 characters"),
                         ("{{ namespace(n=inputs.n) }}", "its value is not JSON data"),
                         ("{{ steps.record.output }}", "has no attribute 'record'")):
        flow = flow_file(tmp_path, VALUES.replace('"{{ inputs.n * 2 }}"', f'"{output}"'))
        outcome, _ = run(flow, [], {"n": 7, "words": "red green blue"}, tmp_path / str(len(said)))
        assert outcome.status == "failed"
        assert outcome.error.startswith(f"{flow}:10:13: step number: its output cannot be rendered: ")
        assert said in outcome.error


EXAMPLES = """\
flowrun: 1
name: Examples
description: You plan trips.
inputs:
  query: {type: string}
tools: [calculator]
steps:
  parse:
    kind: process
    instruction: "How many days: {{ inputs.query }}"
    output_schema: {type: object, properties: {days: {type: integer}}, required: [days]}
    examples:
      - {input: "How many days: a weekend in Austin", answer: {days: 2}}
    next: hours
  hours:
    kind: process
    instruction: Hours in {{ steps.parse.output.days }} days.
    tool: calculator
    output: "{{ result.result }}"
    examples:
      - {input: Hours in 2 days., answer: {expression: 2 * 24}}
    next: long
  long:
    kind: decision
    question: Are {{ steps.hours.output }} hours long?
    examples:
      - {input: Are 5 hours long?, answer: "no"}
      - {input: Are 300 hours long?, answer: "yes"}
    branches: {"yes": done, "no": done}
  done:
    kind: terminal
    instruction: Say how long the trip is.
    examples:
      - {input: Say how long the trip is., answer: Two days.}
"""


def test_examples_go_into_the_prompt_as_turns_in_the_form_the_model_answers_in(tmp_path: Path) -> None:
    responses = [
        {"key": "parse", "text": '{"days": 3}'},
        {"key": "hours", "text": '{"tool": "calculator", "arguments": {"expression": "3 * 24"}}'},
        # answered only if the examples were sent, in the form choose constrains the answer to
        {"prompt": r'Are 300 hours long\?\nAnswer with exactly one of: yes, no\.\n"yes"\nAre 72 hours long\?',
         "text": '"no"'},
        {"key": "done", "text": "Three days."},
    ]
    outcome, kernel = run(flow_file(tmp_path, EXAMPLES), responses, {"query": "3 days in Texas"}, tmp_path)
    assert outcome.status == "finished", outcome.error
    prompts = {s.step: s.prompt for s in stored_steps(kernel, outcome)}
    count = {"parse": 1, "hours": 1, "long": 2, "done": 1}  # examples per step

    def turns(step: str) -> list[tuple[str, str]]:  # between the system message (and progress) and the ask
        return [(m["role"], m["content"]) for m in prompts[step][-1 - 2 * count[step]:-1]]

    assert turns("parse") == [
        ("user", 'How many days: a weekend in Austin\nAnswer with JSON like {"days": 0}'),
        ("assistant", '{"days": 2}')]
    assert turns("hours") == [
        ("user", 'Hours in 2 days.\nCall calculator: answer with JSON, {"tool": "<its name>", "arguments": {...}}.'),
        ("assistant", '{"tool": "calculator", "arguments": {"expression": "2 * 24"}}')]
    assert turns("long") == [
        ("user", "Are 5 hours long?\nAnswer with exactly one of: yes, no."), ("assistant", '"no"'),
        ("user", "Are 300 hours long?\nAnswer with exactly one of: yes, no."), ("assistant", '"yes"')]
    assert turns("done") == [("user", "Say how long the trip is."), ("assistant", "Two days.")]
    for step in count:  # the system message first, the step's own ask last
        assert prompts[step][0]["role"] == "system" and prompts[step][-1]["role"] == "user"
    # progress comes before the examples, so a run's prompts share their start (a backend's cached prefix)
    assert prompts["long"][:3] == prompts["done"][:3] and len(prompts["done"]) == 1 + 6 + 2 + 1
    assert prompts["long"][-1]["content"].startswith("Are 72 hours long?")
    assert outcome.answer == "Three days."


BANK = """\
flowrun: 1
name: Bank
inputs:
  problem: {type: string}
steps:
  kind_of:
    kind: decision
    question: "Which kind of problem: {{ inputs.problem }}"
    examples_shown: 2
    examples:
      - {input: "Which kind of problem: What is 30% of 450?", answer: percent}
      - {input: "Which kind of problem: 12 boxes hold 10 pens each. How many pens?", answer: product}
      - {input: "Which kind of problem: What is the average of 4, 8 and 9?", answer: average}
      - {input: "Which kind of problem: What percentage of 50 is 5?", answer: percent}
      - {input: "Which kind of problem: A glass holds 200 ml. How many glasses fill 2 litres?", answer: ratio}
    branches: {percent: done, product: done, average: done, ratio: done}
  done:
    kind: terminal
    output: "{{ steps.kind_of.output }}"
"""


def test_examples_shown_sends_those_most_like_the_question_the_most_alike_last(tmp_path: Path) -> None:
    problems = {"What is the average of 7 and 9?": ["percent", "average"],
                "A box holds 6 glasses. How many glasses are in 4 boxes?": ["product", "ratio"],
                "What percentage of 80 is 12?": ["percent", "percent"]}
    for problem, expected in problems.items():
        responses = [{"key": "kind_of", "text": f'"{expected[-1]}"'}]
        outcome, kernel = run(flow_file(tmp_path, BANK), responses, {"problem": problem}, tmp_path / expected[0])
        assert outcome.status == "finished", outcome.error
        prompt = next(s.prompt for s in stored_steps(kernel, outcome) if s.step == "kind_of")
        shown = [json.loads(m["content"]) for m in prompt if m["role"] == "assistant"]
        assert shown == expected, problem
        assert "Which kind of problem: " + problem in prompt[-1]["content"]
        if problem.startswith("What percentage"):  # the nearest, sharing "what percentage of", comes last
            assert "What percentage of 50 is 5?" in prompt[-3]["content"]


ROUTER = """\
flowrun: 1
name: Router
inputs:
  request: {type: string}
steps:
  direction:
    kind: decision
    question: What does "{{ inputs.request }}" ask for?
    answer_by: examples
    examples_shown: 3
    examples:
      - {input: What does "a table for two in Reno" ask for?, answer: restaurant}
      - {input: What does "sushi for dinner in Boise" ask for?, answer: restaurant}
      - {input: What does "where to eat lunch in Tulsa" ask for?, answer: restaurant}
      - {input: What does "a hotel room in Reno" ask for?, answer: hotel}
      - {input: What does "somewhere to sleep in Boise" ask for?, answer: hotel}
      - {input: What does "a motel for two nights in Tulsa" ask for?, answer: hotel}
    branches: {restaurant: done, hotel: done}
  done:
    kind: terminal
    output: "{{ steps.direction.output }}"
"""


def test_answer_by_examples_takes_the_label_the_most_alike_examples_vote_for_with_no_model_call(
        tmp_path: Path) -> None:
    for request, label in [("dinner for two in Austin", "restaurant"), ("a cheap hotel in Austin", "hotel"),
                           ("where to sleep two nights", "hotel"), ("sushi in Reno", "restaurant")]:
        outcome, kernel = run(flow_file(tmp_path, ROUTER), [], {"request": request}, tmp_path / request)
        assert (outcome.status, outcome.answer) == ("finished", label), (request, outcome.error)
        assert model_calls(kernel) == []
        assert [s.output for s in stored_steps(kernel, outcome) if s.step == "direction"] == [label]


def test_answer_by_examples_asks_the_model_when_the_vote_is_tied_or_no_example_is_alike(tmp_path: Path) -> None:
    # "in" is in every example (so counts for nothing); "Reno" is in one example of each kind: a tie
    for request in ["something else entirely", "anything in Reno"]:
        responses = [{"key": "direction", "text": '"hotel"'}]
        outcome, kernel = run(flow_file(tmp_path, ROUTER), responses, {"request": request}, tmp_path / request)
        assert (outcome.status, outcome.answer) == ("finished", "hotel"), (request, outcome.error)
        assert len(model_calls(kernel, "direction")) == 1
        # the model is shown the examples_shown most alike, as without answer_by
        prompt = next(s.prompt for s in stored_steps(kernel, outcome) if s.step == "direction")
        assert sum(m["role"] == "assistant" for m in prompt) == 3


def test_answer_by_examples_is_checked_at_validate_time(tools) -> None:
    assert diagnostics(ROUTER, tools) == set()
    no_hotel = ROUTER.replace("answer: hotel}", "answer: restaurant}")
    found = check_flow_text(no_hotel, "flow.yaml", tools).diagnostics
    assert [(d.line, d.code) for d in found] == [(18, "FR110")]
    assert "none answers 'hotel'" in found[0].message
    head, tail = ROUTER.split("    examples_shown: 3\n")[0], ROUTER.split("answer: hotel}\n")[-1]
    bare = head + tail
    found = check_flow_text(bare, "flow.yaml", tools).diagnostics
    assert [(d.line, d.code) for d in found] == [(6, "FR003")]
    assert "`answer_by: examples` answers from the step's `examples`: give them" in found[0].message
    decided = ROUTER.replace("    answer_by: examples\n", "    answer_by: examples\n    decide: hotel\n")
    found = check_flow_text(decided, "flow.yaml", tools).diagnostics
    assert any(d.code == "FR003" and "`decide` decides from data, so nothing is left to choose: remove `answer_by`"
               in d.message for d in found)
    free_text = NO_TOOLS + """\
  work:
    kind: process
    instruction: Work.
    answer_by: examples
    examples: [{input: Work on 2., answer: Done 2.}]
    next: done
  done:
    kind: terminal
    instruction: Done.
    answer_by: examples
"""
    found = check_flow_text(free_text, "flow.yaml", tools).diagnostics
    assert [(d.line, d.code) for d in found] == [(6, "FR003"), (12, "FR003"), (15, "FR003")]
    assert "give the step a `tool` or an `output_schema`" in found[0].message
    assert "unknown key 'answer_by'" in found[2].message  # a terminal's answer is never carried over


CARRY = COMPUTE + """\
    answer_by: examples
    examples:
      - {input: "Write the arithmetic for What is 30% of 450?.", answer: {expression: "450 * 30 / 100"}}
      - input: "Write the arithmetic for A soup for 6 people needs 300 g of rice. How much rice for 9 people?."
        answer: {expression: "300 / 6 * 9"}
      - {input: "Write the arithmetic for A car drives 120 km in 2 hours. Its speed?.", answer: {expression: "120 / 2"}}
      - input: "Write the arithmetic for How many seconds are there in 4 hours?."
        answer: {expression: "4 * hours / seconds"}
      - input: "Write the arithmetic for How many 500 ml bottles can be filled from 4 litres of juice?."
        answer: {expression: "4 * litres / (500 * ml)"}
    output: "{{ result.result }}"
    next: answer
  answer:
    kind: terminal
    output: "{{ steps.compute.output }}"
"""


def test_answer_by_examples_carries_the_most_alike_examples_call_over_to_the_problems_numbers_and_words(
        tmp_path: Path) -> None:
    for problem, expression, answer in [
            ("What is 15% of 240?", "240 * 15 / 100", 36),
            # paired by what they count, not where they stand
            ("A cake needs 250 g of flour for 4 people. How much flour for 10 people?", "250 / 4 * 10", 625),
            ("A train drives 360 km in 4 hours. Its speed?", "360 / 4", 90),
            # words: the one after the paired number, and the one in the same place
            ("How many seconds are there in 3.5 minutes?", "3.5 * minutes / seconds", 210),
            ("How many hours are there in 2 weeks?", "2 * weeks / hours", 336)]:
        outcome, kernel = run(flow_file(tmp_path, CARRY), [], {"problem": problem}, tmp_path / problem)
        assert (outcome.status, outcome.answer) == ("finished", answer), (problem, outcome.error)
        assert model_calls(kernel) == []
        [compute] = [s for s in stored_steps(kernel, outcome) if s.step == "compute"]
        assert compute.prompt is None
        [call] = kernel.storage.rows(ToolCallRow)
        assert (call.tool, call.arguments, call.error) == ("calculator", {"expression": expression}, None)


def test_answer_by_examples_asks_the_model_where_the_carried_call_is_refused(tmp_path: Path) -> None:
    # a word the calculator's pattern does not take: the carried call is not made, the model writes it
    responses = [{"key": "compute", "text": '{"tool": "calculator", "arguments": {"expression": "2 * 12"}}'}]
    outcome, kernel = run(flow_file(tmp_path, CARRY), responses, {"problem": "How many eggs are there in 2 dozens?"},
                          tmp_path / "eggs")
    assert (outcome.status, outcome.answer) == ("finished", 24), outcome.error
    assert len(model_calls(kernel, "compute")) == 1
    # a word the pattern takes, but whose units do not cancel out (oz is a mass): the calculator refuses the
    # carried call, and the model writes it
    responses = [{"key": "compute", "text": '{"tool": "calculator", "arguments": {"expression": "2000 / 250"}}'}]
    problem = "How many 8 oz glasses can be filled from 2 litres of juice?"
    outcome, kernel = run(flow_file(tmp_path, CARRY), responses, {"problem": problem}, tmp_path / "oz")
    assert (outcome.status, outcome.answer) == ("finished", 8), outcome.error
    assert len(model_calls(kernel, "compute")) == 1
    refused, written = kernel.storage.rows(ToolCallRow)
    assert refused.arguments == {"expression": "2 * litres / (8 * oz)"} and "do not cancel out" in refused.error
    assert written.arguments == {"expression": "2000 / 250"} and written.error is None


def reading(properties: str, required: str, example: str) -> str:
    """A flow whose one step reads a request into data, carried over from its one `example`."""
    return f"""\
flowrun: 1
name: Read
inputs:
  request: {{type: string}}
steps:
  read:
    kind: process
    instruction: "Read: {{{{ inputs.request }}}}"
    output_schema: {{type: object, properties: {properties}, required: {required}}}
    answer_by: examples
    examples: [{example}]
    next: done
  done:
    kind: terminal
    output: "{{{{ steps.read.output }}}}"
"""


def test_answer_by_examples_carries_data_over_and_holds_it_to_the_output_schema(tmp_path: Path) -> None:
    flow = reading("{days: {type: integer, maximum: 9}, people: {type: integer}, note: {type: string}}",
                   "[days, people]", '{input: "Read: 3 days for 2 people", answer: {days: 3, people: 2, '
                   'note: "3 days, 2 people"}}')
    outcome, kernel = run(flow_file(tmp_path, flow), [], {"request": "4 people for 5 days"}, tmp_path / "a")
    assert outcome.answer == {"days": 5, "people": 4, "note": "5 days, 4 people"}
    assert model_calls(kernel) == []
    # carried over to 12 days, it breaks the schema's maximum: the model answers
    responses = [{"key": "read", "text": '{"days": 9, "people": 1}'}]
    outcome, kernel = run(flow_file(tmp_path, flow), responses, {"request": "12 days for 1 people"}, tmp_path / "b")
    assert outcome.answer == {"days": 9, "people": 1}
    assert len(model_calls(kernel, "read")) == 1


def test_answer_by_examples_carries_a_word_over_only_where_the_question_has_one_word_in_its_place(
        tmp_path: Path) -> None:
    flow = reading("{city: {type: string}, nights: {type: integer}, note: {type: string}}", "[city, nights]",
                   '{input: "Read: 3 nights in Paris, near Paris Opera", answer: {city: Paris, nights: 3, '
                   'note: "Paris, 3 nights"}}')
    outcome, kernel = run(flow_file(tmp_path, flow), [], {"request": "2 nights in Rome, near Rome Termini"},
                          tmp_path / "a")
    assert outcome.answer == {"city": "Rome", "nights": 2, "note": "Rome, 2 nights"}
    assert model_calls(kernel) == []
    outcome, kernel = run(flow_file(tmp_path, flow), [], {"request": "2 nights in Zürich, near Zürich HB"},
                          tmp_path / "z")
    assert outcome.answer == {"city": "Zürich", "nights": 2, "note": "Zürich, 2 nights"}  # a word of any script
    # Paris stands in two places that the request fills with two cities: which one is meant is not known
    outcome, kernel = run(flow_file(tmp_path, flow), [], {"request": "2 nights in Rome, near Milan Central"},
                          tmp_path / "b")
    assert outcome.answer == {"city": "Paris", "nights": 2, "note": "Paris, 2 nights"}


def test_answer_by_examples_asks_the_model_where_no_example_pairs_with_the_problem(tmp_path: Path) -> None:
    # four numbers where every example has two or three; and a problem sharing no word that counts with any
    for problem in ["A car drives 120 km in 2 hours, then 30 km in 1 hour. Its speed?", "Seven times eight?"]:
        responses = [{"key": "compute", "text": '{"tool": "calculator", "arguments": {"expression": "7 * 8"}}'}]
        outcome, kernel = run(flow_file(tmp_path, CARRY), responses, {"problem": problem}, tmp_path / problem)
        assert (outcome.status, outcome.answer) == ("finished", 56), (problem, outcome.error)
        assert len(model_calls(kernel, "compute")) == 1


# --- resume and replay ------------------------------------------------------------------------------------------

DURABLE = COMPUTE + """\
    output: "{{ result.result }}"
    next: check
  check:
    kind: process
    instruction: Check {{ steps.compute.output }} by multiplying back.
    tool: calculator
    output: "{{ result }}"
    next: explain
  explain:
    kind: process
    instruction: Explain {{ steps.compute.output }} in words.
    next: answer
  answer:
    kind: terminal
    output: "{{ steps.compute.output }} m/s ({{ steps.explain.output }}; check {{ steps.check.output.result }})"
"""

DURABLE_ANSWERS = """\
responses:
  - {key: compute, text: '{"tool": "calculator", "arguments": {"expression": "100 / 8"}}'}
  - {key: check, text: '{"tool": "calculator", "arguments": {"expression": "12.5 * 8"}}'}
  - {key: explain, text: twelve and a half metres each second}
"""


def shape(steps: list[StepRow]) -> list[tuple[str, int, str | None, Any]]:
    return [(s.step, s.visit, s.branch, s.output) for s in steps]


def test_a_run_with_output_steps_resumes_and_replays_to_the_same_steps(tmp_path: Path) -> None:
    flow = flow_file(tmp_path, DURABLE)
    good = tmp_path / "good.yaml"
    good.write_text(DURABLE_ANSWERS)
    short = tmp_path / "short.yaml"  # no answer for `explain`: the run fails there
    short.write_text(DURABLE_ANSWERS.rsplit("  - {key: explain", 1)[0])
    run_args = ["run", str(flow), "-i", "problem=100 m in 8 s", "--backend", "scripted", "--json"]

    whole = tmp_path / "whole.db"
    code, out, err = cli(*run_args, "--cassette", str(good), "--db", str(whole))
    assert code == 0, err
    answer = "12.5 m/s (twelve and a half metres each second; check 100.0)"
    assert json.loads(out)["answer"] == answer

    db = tmp_path / "runs.db"
    code, out, _ = cli(*run_args, "--cassette", str(short), "--db", str(db))
    assert code == 1 and json.loads(out)["status"] == "failed"
    run_id = json.loads(out)["run_id"]
    assert [s.step for s in steps_of(db)] == ["compute", "check"]
    code, _, err = cli("runs", "resume", run_id, "--backend", "scripted", "--cassette", str(good), "--db", str(db))
    assert code == 0, err
    assert shape(steps_of(db)) == shape(steps_of(whole))
    assert runs_of(db)[0].answer == answer
    read_back = {s.step: s.output for s in steps_of(db)}
    assert read_back["check"] == {"expression": "12.5 * 8", "result": 100.0}
    raw = {s.step: s.output for s in Storage(f"sqlite:///{db}").rows(StepRow)}
    assert raw["check"] is None  # `{{ result }}` is the tool's result, which its call's record holds: stored once
    assert raw["compute"] == 12.5

    code, out, err = cli("runs", "replay", run_id, "--db", str(db))
    assert code == 0, out + err
    assert "the same path, outputs and answer as recorded" in out


def test_load_flow_reads_output_and_examples_into_the_model(tmp_path: Path) -> None:
    checked = load_flow(flow_file(tmp_path, EXAMPLES))
    assert checked.ok, checked.diagnostics
    hours, long = checked.flow.steps["hours"], checked.flow.steps["long"]
    assert hours.output == "{{ result.result }}" and hours.examples[0].answer == {"expression": "2 * 24"}
    assert [e.answer for e in long.examples] == ["no", "yes"]
    assert checked.compiled.at["hours"]["output"] == (19, 13)
