"""Workers on the real PostgreSQL server tests/test_postgres.py starts: runs queued with `flowrun batch --queue`
and taken by three `flowrun worker` processes. A worker killed mid-run (SIGKILL) has its runs finished by the
others, from their last committed step; a worker frozen past the stall time (SIGSTOP) and woken again (SIGCONT)
finds its runs taken over and writes nothing more of them (fencing). Each step is committed once, and the tool
that is not idempotent is called once per call."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.errors import RunStatus
from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow, StepRow, ToolCallRow
from tests.conftest import ROOT
from tests.fake_ollama import FakeOllama
from tests.test_postgres import postgres, server  # noqa: F401 (fixtures: a PostgreSQL server on loopback)

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent / "flows"  # append_entry, the tool that is not idempotent
STALL = 3  # seconds without a heartbeat after which a worker's runs are taken over
RELAY = """\
flowrun: 1
name: Relay
description: You think about a number and note it in the ledger.
inputs:
  n: {type: integer}
tools: [append_entry]
steps:
  think: {kind: process, instruction: "Think about {{ inputs.n }}.", next: note}
  note: {kind: process, instruction: "Note {{ inputs.n }} in the ledger.", tool: append_entry, next: again}
  again: {kind: process, instruction: Think again., next: more}
  more: {kind: process, instruction: Think more., next: done}
  done: {kind: terminal, instruction: Say what you noted.}
"""
WORDS = " ".join(["thinking"] * 16)
ANSWERS = {"token_delay": 0.03, "responses": [
    {"key": "think", "times": 1000, "text": WORDS},
    {"key": "note", "times": 1000, "text": '{"tool": "append_entry", "arguments": {"text": "noted"}}'},
    {"key": "again", "times": 1000, "text": WORDS},
    {"key": "more", "times": 1000, "text": WORDS},
    {"key": "done", "times": 1000, "text": "I noted it."}]}


@pytest.fixture
def queued(postgres: str, tmp_path: Path) -> Callable[[int], list[str]]:  # noqa: F811 (the fixture)
    """Queue `n` runs of Relay; their ids."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "relay.yaml").write_text(RELAY)
    (tmp_path / "answers.cassette.yaml").write_text(json.dumps(ANSWERS))

    def queue(n: int) -> list[str]:
        (tmp_path / "inputs.jsonl").write_text("".join(json.dumps({"n": k}) + "\n" for k in range(n)))
        done = subprocess.run([sys.executable, "-m", "engine", "batch", str(tmp_path / "flows" / "relay.yaml"),
                               "--inputs", str(tmp_path / "inputs.jsonl"), "--queue", "--tools", str(HERE),
                               "--db", postgres, "--json"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
        return [run["run_id"] for run in json.loads(done.stdout)]

    return queue


def start_workers(postgres: str, tmp_path: Path, *model: str) -> list[subprocess.Popen[str]]:  # noqa: F811
    """Three `flowrun worker` processes on the database, two runs at a time each, on `model` (options), their
    stderr kept."""
    return [subprocess.Popen(
        [sys.executable, "-m", "engine", "worker", "--flows", str(tmp_path / "flows"), "--tools", str(HERE), *model,
         "--concurrency", "2", "--stall", str(STALL), "--db", postgres], cwd=tmp_path, text=True,
        stdout=subprocess.DEVNULL, stderr=(tmp_path / f"worker{n}.log").open("w"),
        env={**os.environ, "PYTHONPATH": str(ROOT)}) for n in range(3)]


def stop(workers: list[subprocess.Popen[str]]) -> None:
    for process in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
    for process in workers:
        process.wait(timeout=60)


@pytest.fixture
def workers(postgres: str, tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:  # noqa: F811 (the fixture)
    """Three workers on the scripted backend."""
    started = start_workers(postgres, tmp_path, "--backend", "scripted", "--cassette",
                            str(tmp_path / "answers.cassette.yaml"))
    yield started
    stop(started)


def until(what: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def mid_run(storage: Storage, worker: subprocess.Popen[str]) -> list[RunRow]:
    """The runs `worker` holds that have committed a step, once it has one and none of its runs is in a call of
    append_entry: a worker killed or frozen in a call that is not idempotent leaves that run to a person (stored
    interrupted, the call named), by design, which these tests, waiting for every run to finish, do not do."""
    found: list[RunRow] = []

    def some() -> bool:
        held = [r for r in storage.rows(RunRow) if r.pid == worker.pid and r.status == RunStatus.RUNNING]
        stepped = {s.run_id for s in storage.of_runs(StepRow, [r.id for r in held])}
        found[:] = [r for r in held if r.id in stepped]
        calling = any(t.pending for t in storage.of_runs(ToolCallRow, [r.id for r in held]))
        return bool(found) and not calling

    until(some)
    return found


def check_each_done_once(storage: Storage, run_ids: list[str], tmp_path: Path) -> None:
    """Once every run has ended: every run finished; each step is stored once; append_entry did each call once."""
    until(lambda: {r.status for r in storage.rows(RunRow)} == {RunStatus.FINISHED}, timeout=180)
    runs = {r.id: r for r in storage.rows(RunRow)}
    assert {runs[run].status for run in run_ids} == {RunStatus.FINISHED}, [runs[run].error for run in run_ids]
    steps = Counter((s.run_id, s.step, s.visit) for s in storage.rows(StepRow))
    assert set(steps.values()) == {1} and Counter(run for run, _, _ in steps) == dict.fromkeys(run_ids, 5)
    for run in run_ids:
        workspace = tmp_path / ".flowrun" / "workspaces" / run
        assert len((workspace / "ledger.txt").read_text().splitlines()) == 1
        assert set(Counter((workspace / "calls.log").read_text().split()).values()) == {1}, "a call made twice"


def test_a_killed_workers_runs_finish_on_the_others(postgres: str, queued: Callable[[int], list[str]],  # noqa: F811
                                                    workers: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    run_ids = queued(12)
    storage = Storage(postgres)
    victim = workers[0]
    held = mid_run(storage, victim)
    victim.kill()
    check_each_done_once(storage, run_ids, tmp_path)
    taken = {r.id: r for r in storage.rows(RunRow)}
    for run in held:  # taken over: claimed again (its epoch bumped), by another worker
        assert taken[run.id].epoch > run.epoch and taken[run.id].pid in {w.pid for w in workers[1:]}


def test_a_frozen_worker_woken_again_writes_nothing_more_of_its_runs(
        postgres: str, queued: Callable[[int], list[str]], workers: list[subprocess.Popen[str]],  # noqa: F811
        tmp_path: Path) -> None:
    run_ids = queued(8)
    storage = Storage(postgres)
    frozen = workers[0]
    held = mid_run(storage, frozen)
    frozen.send_signal(signal.SIGSTOP)
    until(lambda: all(r.pid != frozen.pid for r in storage.rows(RunRow) if r.id in {h.id for h in held}),
          timeout=60)
    frozen.send_signal(signal.SIGCONT)  # it goes on where it froze: its next write is refused
    check_each_done_once(storage, run_ids, tmp_path)
    log = tmp_path / "worker0.log"
    until(lambda: all(f"run {run.id} was taken from this worker" in log.read_text() for run in held), timeout=30)
    assert "holds already" not in log.read_text()  # refused by its fence, not by a unique index


def test_a_worker_stopped_with_sigterm_hands_its_runs_to_the_others(
        postgres: str, queued: Callable[[int], list[str]], workers: list[subprocess.Popen[str]],  # noqa: F811
        tmp_path: Path) -> None:
    run_ids = queued(8)
    storage = Storage(postgres)
    leaving = workers[0]
    held = mid_run(storage, leaving)
    leaving.terminate()
    assert leaving.wait(timeout=60) == 130
    stored = {r.id: r for r in storage.rows(RunRow)}
    assert all(stored[run.id].status != RunStatus.RUNNING or stored[run.id].pid != leaving.pid for run in held)
    check_each_done_once(storage, run_ids, tmp_path)


def test_workers_share_a_pool_of_model_hosts_never_past_their_slots(
        postgres: str, queued: Callable[[int], list[str]], tmp_path: Path) -> None:  # noqa: F811
    """Three workers, two runs at a time each, on two Ollama hosts of 2 and 1 slots (fakes that count what they
    run at once) and one that is down: every generation gets a slot of the least-loaded host, never more than its
    slots across the workers, also when a worker is killed holding one (its lease runs out) and when one freezes
    past the stall time and comes back; the host that is down is routed around."""
    def answer(body: dict) -> str:  # the tool step asks for JSON, the others for words
        return '{"tool": "append_entry", "arguments": {"text": "noted"}}' if body.get("format") else WORDS

    fakes = [FakeOllama({}, answer=answer, slots=2, token_delay=0.03),
             FakeOllama({}, answer=answer, slots=1, token_delay=0.03)]
    with socket.socket() as probe:  # a host that is down: nothing listens there
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}"
    (tmp_path / "hosts.yaml").write_text("lease: 3\nretry_after: 60\nhosts:\n" + "".join(
        f"  - {{url: '{fake.url}', slots: {fake.slots}}}\n" for fake in fakes) + f"  - {{url: '{down}', slots: 4}}\n")
    run_ids = queued(12)
    started = start_workers(postgres, tmp_path, "--hosts", str(tmp_path / "hosts.yaml"), "--model", "m")
    try:
        storage = Storage(postgres)
        mid_run(storage, started[0])
        started[0].kill()
        held = mid_run(storage, started[1])  # then another one freezes past the stall time, and comes back
        started[1].send_signal(signal.SIGSTOP)
        until(lambda: all(r.pid != started[1].pid for r in storage.rows(RunRow) if r.id in {h.id for h in held}),
              timeout=60)
        started[1].send_signal(signal.SIGCONT)
        check_each_done_once(storage, run_ids, tmp_path)
        assert [(fake.peak, fake.overrun) for fake in fakes] == [(2, 0), (1, 0)]
    finally:
        stop(started)
        for fake in fakes:
            fake.close()


def test_serve_queue_hands_runs_to_the_workers_and_follows_their_events(
        postgres: str, queued: Callable[[int], list[str]], workers: list[subprocess.Popen[str]],  # noqa: F811
        tmp_path: Path) -> None:
    """`flowrun serve --queue`: POST /runs stores a queued run for the workers; its events are followed in
    storage while a worker runs it, to its end."""
    import httpx

    from tests.test_serve import free_port, serving

    port = free_port()
    serve = serving(port, tmp_path / "flows", tmp_path / "answers.cassette.yaml", postgres, "--queue", "--tools",
                    str(HERE))
    try:
        base = f"http://127.0.0.1:{port}"
        created = httpx.post(f"{base}/runs", json={"flow": "Relay", "inputs": {"n": 7}})
        assert created.status_code == 201 and created.json()["status"] == RunStatus.QUEUED
        run_id = created.json()["id"]
        with httpx.stream("GET", f"{base}/runs/{run_id}/events", timeout=120) as events:
            kinds = [line.removeprefix("event: ") for line in events.iter_lines() if line.startswith("event: ")]
        assert kinds == ["step.ended"] * 5 + ["run.ended"]
        shown = httpx.get(f"{base}/runs/{run_id}").json()
        assert shown["status"] == RunStatus.FINISHED
        assert Storage(postgres).find_run(run_id).pid in {w.pid for w in workers}  # a worker ran it
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
