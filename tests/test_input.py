"""Input steps: a run asks a person and waits, with no process, until it is answered from another process (the
CLI, the HTTP API, a terminal) or its time runs out; wrong answers, double answers and answers to runs that do
not wait are refused; the answers are recorded, so resume and replay need nobody."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.errors import RunStatus
from engine.flow.manifest import load_tools
from engine.flow.validate import CheckedFlow, check_flow_text
from engine.interpreter import answering
from engine.interpreter.replay import replay_run
from engine.interpreter.runs import record
from engine.interpreter.setup import kernel_for
from engine.interpreter.walk import RunOutcome, run_flow
from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow, SyscallRow
from engine.llm.scripted import ScriptedBackend
from tests.conftest import FLOWS, ROOT
from tests.test_run_cli import cli
from tests.test_serve import free_port, serving

APPROVE = FLOWS / "approve_post.yaml"
DRAFTS = ("responses:\n  - {key: draft, text: '{\"post\": \"First draft.\"}'}\n"
          "  - {key: draft, text: '{\"post\": \"Second draft.\"}'}\n")


def flowrun(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`flowrun ARGS` in a process of its own (each test step is another process, as a person's would be)."""
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, input=stdin,
                          cwd=ROOT, timeout=120)


def waiting_run(tmp_path: Path, flow: Path = APPROVE, inputs: tuple[str, ...] = ("-i", "topic=opening hours")
                ) -> tuple[str, list[str]]:
    """A run of `flow` started in a process that ended while the run waits; its id and the options to go on."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cassette = tmp_path / "drafts.cassette.yaml"
    cassette.write_text(DRAFTS)
    options = ["--backend", "scripted", "--cassette", str(cassette), "--db", str(tmp_path / "runs.db")]
    started = flowrun("run", str(flow), *inputs, *options, "--json")
    assert started.returncode == 4, started.stderr  # waiting
    ended = json.loads(started.stdout)
    assert ended["status"] == "waiting" and "flowrun runs answer" in ended["error"]
    return ended["run_id"], options


def row(tmp_path: Path, run_id: str) -> RunRow:
    return Storage(f"sqlite:///{tmp_path / 'runs.db'}", reading=True).find_run(run_id)


def test_a_waiting_run_outlives_its_process_and_is_answered_from_another(tmp_path: Path) -> None:
    run_id, options = waiting_run(tmp_path)
    waiting = row(tmp_path, run_id)
    assert waiting.status == "waiting" and waiting.asking["step"] == "review"
    assert "First draft." in waiting.asking["prompt"] and waiting.asking["deadline"] > time.time() + 86_000
    shown = flowrun("runs", "show", run_id, *options[-2:])
    assert "waiting for an answer to step review" in shown.stdout and "First draft." in shown.stdout

    changes = flowrun("runs", "answer", run_id[:10], "--value", '{"decision": "changes", "note": "Shorter."}',
                      *options, "--json")
    assert changes.returncode == 4, changes.stderr  # it drafted again, and waits for the second review
    assert row(tmp_path, run_id).asking["prompt"].count("Second draft.") == 1
    approved = flowrun("runs", "answer", run_id, "--value", '{"decision": "approve"}', *options, "--json")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["answer"] == {"status": "published", "post": "Second draft.", "drafts": 2}
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    answers = [json.loads(c.text) for c in storage.rows(SyscallRow) if c.kind == "input"]
    assert answers == [{"answer": {"decision": "changes", "note": "Shorter."}}, {"answer": {"decision": "approve"}}]
    # the answers are recorded like the model's: a replay needs neither the model nor the person
    checked = check_flow_text(APPROVE.read_text(), str(APPROVE), load_tools([]).tools)
    replayed = asyncio.run(replay_run(record(storage, run_id), checked, file=str(APPROVE)))
    assert replayed.differences == [] and replayed.outcome.answer["drafts"] == 2


def test_a_wrong_answer_is_refused_and_the_run_still_waits(tmp_path: Path) -> None:
    run_id, options = waiting_run(tmp_path)
    for value in ('{"decision": "maybe"}', '"approve"', '{"decision": "approve", "extra": 1}'):
        refused = flowrun("runs", "answer", run_id, "--value", value, *options)
        assert refused.returncode == 2 and "does not fit step review" in refused.stderr, refused.stderr
    assert flowrun("runs", "answer", run_id, "--value", "{not json", *options).returncode == 2
    assert row(tmp_path, run_id).status == "waiting"
    assert not [c for c in Storage(f"sqlite:///{tmp_path / 'runs.db'}").rows(SyscallRow) if c.kind == "input"]


def test_a_run_that_does_not_wait_takes_no_answer(tmp_path: Path) -> None:
    run_id, options = waiting_run(tmp_path)
    assert flowrun("runs", "answer", run_id, "--value", '{"decision": "reject"}', *options).returncode == 0
    again = flowrun("runs", "answer", run_id, "--value", '{"decision": "approve"}', *options)
    assert again.returncode == 2 and "waits for no answer: it is finished" in again.stderr
    assert row(tmp_path, run_id).answer["status"] == "rejected"
    resumed = flowrun("runs", "resume", run_id, *options)
    assert resumed.returncode == 2 and "it finished" in resumed.stderr


def test_of_answers_given_at_once_exactly_one_counts(tmp_path: Path) -> None:
    run_id, _ = waiting_run(tmp_path)
    outcomes: list[str] = []

    def give(n: int) -> None:
        storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
        try:
            answering.answer(storage, run_id, {"decision": "reject", "note": f"answer {n}"})
            outcomes.append(f"counted {n}")
        except answering.AnswerError:
            outcomes.append("refused")
        finally:
            storage.close()

    threads = [threading.Thread(target=give, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counted = [o for o in outcomes if o.startswith("counted")]
    assert len(counted) == 1 and outcomes.count("refused") == 7, outcomes
    recorded = [json.loads(c.text) for c in Storage(f"sqlite:///{tmp_path / 'runs.db'}").rows(SyscallRow)
                if c.kind == "input"]
    assert recorded == [{"answer": {"decision": "reject", "note": counted[0].replace("counted", "answer")}}]
    assert row(tmp_path, run_id).status == "paused"


SOON = APPROVE.read_text().replace("timeout: 2d", "timeout: 4s")


def past_deadline(tmp_path: Path, run_id: str) -> None:
    """Wait until the question of the run stops waiting (its deadline, as stored)."""
    time.sleep(max(0.0, row(tmp_path, run_id).asking["deadline"] - time.time()) + 0.1)


def test_a_timeout_fires_with_no_process_running_when_runs_list_or_resume_sees_it(tmp_path: Path) -> None:
    flow = tmp_path / "approve_soon.yaml"
    flow.write_text(SOON)
    run_id, options = waiting_run(tmp_path, flow)
    code, _, err = cli("runs", "resume", run_id, *options)
    assert code == 2 and "waits for an answer to step review (it times out at" in err
    past_deadline(tmp_path, run_id)  # with no process of the run's
    listed = flowrun("runs", "list", *options[-2:], "--json")
    assert json.loads(listed.stdout)[0]["status"] == "paused"  # runs list timed it out
    late = flowrun("runs", "answer", run_id, "--value", '{"decision": "approve"}', *options)
    assert late.returncode == 2 and "waits for no answer" in late.stderr
    resumed = flowrun("runs", "resume", run_id, *options, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["answer"]["reason"] == "nobody answered in time"

    # runs resume times it out itself, and an answer past the deadline is refused, timing it out
    run_id, options = waiting_run(tmp_path / "again", flow)
    past_deadline(tmp_path / "again", run_id)
    late = flowrun("runs", "answer", run_id, "--value", '{"decision": "approve"}', *options)
    assert late.returncode == 2 and "too late: step review stopped waiting" in late.stderr
    assert json.loads(flowrun("runs", "resume", run_id, *options, "--json").stdout)["answer"]["status"] == "rejected"


LABELS = """\
flowrun: 1
name: Labels
steps:
  ask:
    kind: input
    prompt: Ship it?
    branches: {yes: shipped, no: held, timeout: held}
    timeout: %s
  shipped: {kind: terminal, output: shipped}
  held: {kind: terminal, output: "held ({{ steps.ask.output }})"}
"""


def run_labels(tmp_path: Path, timeout: str, answerer: Any) -> tuple[RunOutcome, Storage]:
    checked = check_flow_text(LABELS % timeout, str(tmp_path / "labels.yaml"), load_tools([]).tools)
    assert checked.ok, checked.diagnostics
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    kernel = kernel_for([checked], ScriptedBackend([]), storage, workspaces=tmp_path / "workspaces")
    kernel.answerer = answerer
    return asyncio.run(run_flow(kernel, checked.compiled, {}, file=str(tmp_path / "labels.yaml"))), storage


def test_a_label_answer_takes_its_branch_and_a_timeout_the_timeout_branch(tmp_path: Path) -> None:
    from engine.kernel.asking import Answer

    async def yes(run: str, question: Any) -> Answer:
        assert question.labels == ("yes", "no")  # `timeout` is no answer a person gives
        return Answer("yes")

    outcome, _ = run_labels(tmp_path, "1h", yes)
    assert (outcome.status, outcome.answer) == (RunStatus.FINISHED, "shipped")

    async def nobody(run: str, question: Any) -> None:
        return None

    outcome, storage = run_labels(tmp_path / "late", "50ms", nobody)
    assert outcome.status == RunStatus.WAITING
    time.sleep(0.1)
    [settled] = answering.time_out(storage)
    assert settled.question.step == "ask" and storage.find_run(outcome.run_id).status == "paused"


CHILD_ASKS = """\
flowrun: 1
name: Team
agents: [approve_post]
steps:
  post:
    kind: agent
    flow: approve_post
    inputs: {topic: "{{ inputs.topic }}"}
    next: done
  done:
    kind: terminal
    output: "{{ steps.post.output.status }}"
inputs:
  topic: {type: string}
"""


def test_a_child_run_that_asks_makes_its_parent_wait_and_is_answered_through_it(tmp_path: Path) -> None:
    (tmp_path / "approve_post.yaml").write_text(APPROVE.read_text())
    team = tmp_path / "team.yaml"
    team.write_text(CHILD_ASKS)
    cassette = tmp_path / "drafts.cassette.yaml"
    cassette.write_text("responses:\n  - {key: post.draft, text: '{\"post\": \"First draft.\"}'}\n")
    options = ["--backend", "scripted", "--cassette", str(cassette), "--db", str(tmp_path / "runs.db")]
    started = flowrun("run", str(team), "-i", "topic=hours", *options, "--json")
    assert started.returncode == 4, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    [child] = Storage(f"sqlite:///{tmp_path / 'runs.db'}", reading=True).children([run_id])
    assert (child.status, child.asking["key"]) == ("waiting", "post.review")
    answered = flowrun("runs", "answer", run_id, "--value", '{"decision": "approve"}', *options, "--json")
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["answer"] == "published"


class Terminal:
    """`flowrun ARGS` on a pseudo-terminal (its stdin and stderr; stdout a pipe), as a person runs it."""

    def __init__(self, *args: str) -> None:
        self.main, child = pty.openpty()
        self.process = subprocess.Popen([sys.executable, "-m", "engine", *args], stdin=child, stdout=subprocess.PIPE,
                                        stderr=child, cwd=ROOT, env={**os.environ, "TERM": "dumb"})
        os.close(child)
        self.seen = ""

    def read_until(self, text: str) -> None:
        deadline = time.time() + 60
        while text not in self.seen and time.time() < deadline:
            if select.select([self.main], [], [], 0.5)[0]:
                self.seen += os.read(self.main, 4096).decode(errors="replace")
        assert text in self.seen, self.seen

    def drain(self, seconds: float) -> str:
        """What it writes in the next `seconds`."""
        before, deadline = len(self.seen), time.time() + seconds
        while time.time() < deadline:
            if select.select([self.main], [], [], 0.1)[0]:
                self.seen += os.read(self.main, 4096).decode(errors="replace")
        return self.seen[before:]

    def type(self, line: str) -> None:
        os.write(self.main, line.encode() + b"\n")

    def end(self) -> tuple[int, str]:
        out, _ = self.process.communicate(timeout=60)
        os.close(self.main)
        return self.process.returncode, out


def test_a_terminal_answers_inline_asked_again_until_the_answer_fits(tmp_path: Path) -> None:
    cassette = tmp_path / "drafts.cassette.yaml"
    cassette.write_text(DRAFTS)
    terminal = Terminal("run", str(APPROVE), "-i", "topic=hours", "--backend", "scripted", "--cassette",
                        str(cassette), "--db", str(tmp_path / "runs.db"))
    terminal.read_until("> ")
    assert "Publish this post about hours?" in terminal.seen and "First draft." in terminal.seen
    assert "tok/s" not in terminal.drain(0.8)  # the progress line does not redraw over the answer being typed
    terminal.type('{"decision": "maybe"}')
    terminal.read_until("does not fit")
    terminal.type('{"decision": "approve"}')
    code, out = terminal.end()
    assert code == 0, terminal.seen
    assert json.loads(out) == {"status": "published", "post": "First draft.", "drafts": 1}


def test_a_run_interrupted_while_asking_on_a_terminal_can_be_resumed_and_answered(tmp_path: Path) -> None:
    cassette = tmp_path / "drafts.cassette.yaml"
    cassette.write_text(DRAFTS)
    options = ["--backend", "scripted", "--cassette", str(cassette), "--db", str(tmp_path / "runs.db")]
    terminal = Terminal("run", str(APPROVE), "-i", "topic=hours", *options)
    terminal.read_until("> ")
    terminal.process.send_signal(signal.SIGINT)  # Ctrl-C while it asks
    code, _ = terminal.end()
    assert code == 130, terminal.seen
    [run] = Storage(f"sqlite:///{tmp_path / 'runs.db'}", reading=True).find_runs()
    assert run.status == "interrupted"
    resumed = flowrun("runs", "resume", run.id, *options)  # not on a terminal: nobody to ask, so it waits
    assert resumed.returncode == 4, resumed.stderr
    answered = flowrun("runs", "answer", run.id, "--value", '{"decision": "approve"}', *options, "--json")
    assert answered.returncode == 0 and json.loads(answered.stdout)["answer"]["status"] == "published"


def test_the_http_api_answers_a_waiting_run_and_its_event_says_what_it_asks(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "approve_post.yaml").write_text(APPROVE.read_text().replace("timeout: 2d", "timeout: 3s"))
    cassette = tmp_path / "drafts.cassette.yaml"
    cassette.write_text(DRAFTS.replace("Second draft.", "First draft."))
    port, db = free_port(), tmp_path / "served.db"
    base = f"http://127.0.0.1:{port}"
    server = serving(port, flows, cassette, db, "--timeouts-every", "0.2")
    try:
        def started() -> str:
            return httpx.post(f"{base}/runs", json={"flow": "ApprovePost", "inputs": {"topic": "hours"}}).json()["id"]

        def settled(run_id: str, status: str) -> dict[str, Any]:
            for _ in range(200):
                found = httpx.get(f"{base}/runs/{run_id}").json()
                if found["status"] == status:
                    return found
                time.sleep(0.05)
            raise AssertionError(f"run {run_id} is {found['status']}, not {status}")

        first = started()
        waiting = settled(first, "waiting")
        assert waiting["asking"]["step"] == "review"
        events = httpx.get(f"{base}/runs/{first}/events", timeout=30).text
        asked = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: ")
                 and '"input.required"' in line]
        assert asked and asked[0]["prompt"].startswith("Publish this post about hours?")
        assert httpx.post(f"{base}/runs/{first}/answer", json={"value": {"decision": "nope"}}).status_code == 422
        answered = httpx.post(f"{base}/runs/{first}/answer", json={"value": {"decision": "approve"}})
        assert answered.status_code == 200 and answered.json()["step"] == "review"
        assert settled(first, "finished")["answer"]["status"] == "published"
        assert httpx.post(f"{base}/runs/{first}/answer", json={"value": {"decision": "approve"}}).status_code == 409

        second = started()  # nobody answers: the server times it out and it goes on, rejected
        assert settled(second, "finished")["answer"]["reason"] == "nobody answered in time"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("timeout", ["0s", "-1s"])
def test_an_input_step_needs_a_way_on_and_a_positive_timeout(tmp_path: Path, timeout: str) -> None:
    checked: CheckedFlow = check_flow_text(LABELS % timeout, "labels.yaml", load_tools([]).tools)
    assert [d.code for d in checked.diagnostics] == ["FR003"]
    unbounded = LABELS.replace("    timeout: %s\n", "")
    [problem] = check_flow_text(unbounded, "l.yaml", load_tools([]).tools).diagnostics
    assert "give the step a `timeout`" in problem.message


def test_eval_cases_answer_the_input_steps_of_their_runs(tmp_path: Path) -> None:
    approve = {"name": "approved", "inputs": {"topic": "hours"}, "answers": {"review": {"decision": "approve"}},
               "responses": [{"key": "draft", "text": '{"post": "We open at 8."}'}],
               "expect": {"contains": "published"}}
    unanswered = {**approve, "name": "nobody answers", "answers": {}}
    data = tmp_path / "approve.jsonl"
    data.write_text(json.dumps(approve) + "\n" + json.dumps(unanswered) + "\n")
    code, out, err = cli("eval", str(APPROVE), "--data", str(data), "--db", str(tmp_path / "r.db"),
                         "--backend", "cassette", "--format", "json")
    assert code == 0, out + err
    found = json.loads(out)["configurations"][0]
    assert {r["name"]: r["score"] for r in found["results"]} == {"approved": 1.0, "nobody answers": 0.0}


MAP_ASKS = """\
flowrun: 1
name: Each
steps:
  each:
    kind: map
    items: "[1, 2, 3]"
    steps:
      ask: {kind: input, prompt: "Item {{ item }}?", next: said}
      said: {kind: terminal, output: "{{ item }}={{ steps.ask.output }}"}
    next: done
  done: {kind: terminal, output: "{{ steps.each.output | join(', ') }}"}
"""


def test_questions_asked_at_once_are_answered_one_by_one_by_key_or_child_run(tmp_path: Path) -> None:
    flow = tmp_path / "each.yaml"
    flow.write_text(MAP_ASKS)
    cassette = tmp_path / "none.cassette.yaml"
    cassette.write_text("responses: []\n")
    options = ["--backend", "scripted", "--cassette", str(cassette), "--db", str(tmp_path / "runs.db")]
    started = flowrun("run", str(flow), *options, "--json")
    assert started.returncode == 4, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    shown = flowrun("runs", "show", run_id, *options[-2:]).stdout
    assert all(f"--step 'each[{n}].ask'" in shown for n in range(3)), shown
    vague = flowrun("runs", "answer", run_id, "--text", "a", *options)
    assert vague.returncode == 2 and "each[0].ask, each[1].ask, each[2].ask" in vague.stderr
    # by key through the run a user started, recorded only; then by the child run's own id; then the last
    assert flowrun("runs", "answer", run_id, "--step", "each[1].ask", "--text", "b", "--no-resume",
                   *options).returncode == 0
    [first] = [c for c in Storage(f"sqlite:///{tmp_path / 'runs.db'}").children([run_id]) if c.branch == "0"]
    assert flowrun("runs", "answer", first.id, "--text", "a", *options).returncode == 4  # item 2 still waits
    done = flowrun("runs", "answer", run_id, "--text", "c", *options, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answer"] == "1=a, 2=b, 3=c"
    exported = flowrun("runs", "export", run_id, *options[-2:])
    assert exported.returncode == 0 and "responses: []" in exported.stdout  # a person's answers are no model's


def test_an_answer_to_a_question_asked_before_does_not_answer_the_next(tmp_path: Path) -> None:
    run_id, options = waiting_run(tmp_path)
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    [seen] = answering.waiting(storage, run_id)  # read, as an answer about to be given reads it
    changes = flowrun("runs", "answer", run_id, "--value", '{"decision": "changes", "note": "No."}', *options)
    assert changes.returncode == 4  # meanwhile: answered, drafted again, and it waits on the second draft
    from engine.kernel.asking import Answer
    assert not answering.settle(storage, seen, Answer({"decision": "approve"}))
    [now] = answering.waiting(storage, run_id)
    assert now.question.visit == 2 and "Second draft." in now.question.prompt


def test_a_run_resumed_after_its_input_timed_out_takes_the_answer_given_then(tmp_path: Path) -> None:
    flow = tmp_path / "ask.yaml"
    flow.write_text("flowrun: 1\nname: Ask\nsteps:\n  ask: {kind: input, prompt: Name?, timeout: 2s, next: done}\n"
                    "  done: {kind: terminal, output: \"hello {{ steps.ask.output }}\"}\n")
    run_id, options = waiting_run(tmp_path, flow, ())
    past_deadline(tmp_path, run_id)
    failed = flowrun("runs", "resume", run_id, *options)
    assert failed.returncode == 1 and "nobody answered within its timeout of 2 s" in failed.stderr
    asked = flowrun("runs", "resume", run_id, *options)  # from failed: the step asks again
    assert asked.returncode == 4, asked.stderr
    answered = flowrun("runs", "answer", run_id, "--text", "bob", *options, "--json")
    assert answered.returncode == 0 and json.loads(answered.stdout)["answer"] == "hello bob", answered.stderr


def test_a_deadline_centuries_away_and_a_timeout_of_a_step_without_one_are_no_tracebacks(tmp_path: Path) -> None:
    flow = tmp_path / "far.yaml"
    flow.write_text("flowrun: 1\nname: Far\nsteps:\n  ask: {kind: input, prompt: Name?, timeout: 1e300, next: done}\n"
                    "  done: {kind: terminal, output: x}\n")
    run_id, options = waiting_run(tmp_path, flow, ())
    shown = flowrun("runs", "show", run_id, *options[-2:])
    assert shown.returncode == 0 and "until never" in shown.stdout
    assert flowrun("runs", "resume", run_id, *options).returncode == 2
    (tmp_path / "far.test.yaml").write_text("cases:\n  - name: too late\n    responses: []\n    timeouts: [ask]\n"
                                            "    expect: {status: failed, error: nobody answered}\n")
    flow.write_text(flow.read_text().replace(", timeout: 1e300", ""))
    tested = flowrun("test", str(tmp_path / "far.test.yaml"))
    assert tested.returncode == 0 and "Traceback" not in tested.stderr, tested.stdout + tested.stderr


def test_the_servers_timeout_sweep_outlives_a_failing_look(tmp_path: Path) -> None:
    from engine.kernel.storage import Busy
    from engine.server.app import create_app
    from engine.service import Service

    kernel = kernel_for([], ScriptedBackend([]), Storage(f"sqlite:///{tmp_path / 'r.db'}"))
    service = Service(kernel)
    looks: list[float] = []

    async def time_out() -> list[Any]:
        looks.append(time.time())
        if len(looks) == 1:
            raise Busy("the database is locked")
        return []

    service.time_out = time_out  # type: ignore[method-assign]
    app = create_app(service, {}, {}, sweep=0.05)

    async def serve_a_while() -> None:
        async with app.router.lifespan_context(app):
            await asyncio.sleep(0.4)

    asyncio.run(serve_a_while())
    assert len(looks) > 2


def test_a_terminal_asks_questions_asked_at_once_one_after_the_other(tmp_path: Path) -> None:
    flow = tmp_path / "each.yaml"
    flow.write_text(MAP_ASKS)
    cassette = tmp_path / "none.cassette.yaml"
    cassette.write_text("responses: []\n")
    terminal = Terminal("run", str(flow), "--backend", "scripted", "--cassette", str(cassette), "--db",
                        str(tmp_path / "runs.db"))
    for answer in ("a", "b", "c"):
        terminal.read_until("> ")
        terminal.seen = terminal.seen.replace("> ", "", 1)
        terminal.type(answer)
    code, out = terminal.end()
    assert code == 0, terminal.seen
    assert out.decode().strip() == "1=a, 2=b, 3=c"


def test_eval_cases_answer_the_input_steps_of_their_child_runs(tmp_path: Path) -> None:
    flow = tmp_path / "each.yaml"
    flow.write_text(MAP_ASKS)
    case = {"name": "all", "inputs": {}, "responses": [], "expect": {"equals": "1=a, 2=b, 3=c"},
            "answers": {"each[0].ask": "a", "each[1].ask": "b", "each[2].ask": "c"}}
    data = tmp_path / "each.jsonl"
    data.write_text(json.dumps(case) + "\n")
    code, out, err = cli("eval", str(flow), "--data", str(data), "--db", str(tmp_path / "r.db"), "--backend",
                         "cassette", "--format", "json")
    assert code == 0, out + err
    assert json.loads(out)["configurations"][0]["accuracy"] == 1.0


def test_a_test_case_answering_no_input_step_is_refused_where_it_is_written(tmp_path: Path) -> None:
    flow = tmp_path / "approve_post.yaml"
    flow.write_text(APPROVE.read_text())
    cases = tmp_path / "approve_post.test.yaml"
    cases.write_text("cases:\n  - name: a typo\n    responses: []\n    inputs: {topic: x}\n"
                     "    answers: {revew: {decision: approve}}\n    timeouts: [draft]\n")
    code, out, err = cli("test", str(cases))
    assert code == 2
    assert f"{cases}:5:15: error FR601" in out + err and "no input step is asked as 'revew'" in out + err
    assert "no input step is asked as 'draft' (input steps: review)" in out + err


def test_a_question_left_waiting_under_a_root_answered_for_another_still_times_out(tmp_path: Path) -> None:
    flow = tmp_path / "each.yaml"
    flow.write_text(MAP_ASKS.replace('ask: {kind: input, prompt: "Item {{ item }}?", next: said}',
                                     'ask: {kind: input, prompt: "Item {{ item }}?", timeout: 3s, '
                                     'branches: {ok: said, timeout: said}}').replace('"[1, 2, 3]"', '"[1, 2]"'))
    run_id, options = waiting_run(tmp_path, flow, ())
    assert flowrun("runs", "answer", run_id, "--step", "each[0].ask", "--text", "ok", "--no-resume",
                   *options).returncode == 0
    assert row(tmp_path, run_id).status == "paused"  # item 1 still waits under it
    [late] = [c for c in Storage(f"sqlite:///{tmp_path / 'runs.db'}").children([run_id]) if c.branch == "1"]
    time.sleep(max(0.0, late.asking["deadline"] - time.time()) + 0.1)
    assert flowrun("runs", "list", *options[-2:]).returncode == 0  # it times item 1 out
    done = flowrun("runs", "resume", run_id, *options, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answer"] == "1=ok, 2=None"
