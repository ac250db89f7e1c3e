"""Workers, case by case, on the real PostgreSQL server tests/test_postgres.py starts: a worker's take of a run
(engine.worker.worker.run) in this process, against what another process holds or did. Each case is one an
adversarial review found wrong: a queued run behaves as `flowrun run`'s, nothing a worker that lost its run writes
is stored, no run is left with no job to do it, no worker takes a run another one is running, and a run taken
out of the queue (cancelled, resumed by a person) stays out, with nothing left running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from engine.errors import RunStatus
from engine.flow.validate import load_flow
from engine.interpreter.setup import kernel_for, read_cassette
from engine.kernel.kernel import Kernel
from engine.kernel.scheduler import Policy
from engine.kernel.storage import Fenced, Storage
from engine.kernel.syscall import Syscall, SyscallKind
from engine.kernel.tables import RunRow, StepRow, of_queue
from engine.llm.base import Request
from engine.llm.scripted import ScriptedBackend
from engine.server.catalog import Offered, load_catalog
from engine.service import NotInFlight, Service
from engine.worker import worker
from engine.worker.queue import enqueue, queue_again
from tests.conftest import ROOT
from tests.test_flow_memory import COUNTER
from tests.test_postgres import postgres, server  # noqa: F401 (fixtures: a PostgreSQL server on loopback)
from tests.test_run_cli import cli
from tests.test_workers import ANSWERS, HERE, RELAY

pytestmark = pytest.mark.slow
MINE = {"host": "a", "pid": 1, "pid_started": 1.0}
THEIRS = {"host": "b", "pid": 2, "pid_started": 2.0}


def offered(folder: Path, text: str, name: str) -> Offered:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    checked = load_flow(path, (HERE,))
    assert checked.ok, checked.diagnostics
    return Offered(path, checked)


def taken_over(storage: Storage, other: Storage, run_id: str) -> None:
    """`storage`'s process claims and fences the queued run `run_id`; then `other`'s takes it over."""
    storage.fences.fence(run_id, storage.claim_run(run_id, (RunStatus.QUEUED, None), MINE, queue=True))
    assert other.claim_run(run_id, (RunStatus.RUNNING, 1), THEIRS, queue=True) == 2


def test_a_queued_run_reads_what_its_flow_remembers_as_it_starts(postgres: str, tmp_path: Path) -> None:  # noqa: F811
    flow = offered(tmp_path, COUNTER, "counter")
    storage = Storage(postgres)
    service = Service(kernel_for([flow.checked], ScriptedBackend([]), storage))

    async def two_visits() -> list[object]:
        answers = []
        for city in ("Paris", "Rome"):
            (run_id,) = await enqueue(storage, flow.checked, [{"city": city}], file=str(flow.path))
            assert await worker.run(service, {"Counter": flow}, run_id) == RunStatus.FINISHED
            answers.append(storage.find_run(run_id).answer)
        return answers

    assert asyncio.run(two_visits()) == ["visit 1; Paris", "visit 2; Rome"]


def test_a_queued_run_keeps_its_workspace_and_refuses_model_options(postgres: str, tmp_path: Path,  # noqa: F811
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("run", str(HERE / "adder.yaml"), "-i", "a=1", "-i", "b=2", "--queue", "--workspace",
                         str(tmp_path / "ws"), "--db", postgres, "--json")
    assert code == 0, err
    assert Storage(postgres).find_run(json.loads(out)["run_id"]).workspace == str((tmp_path / "ws").resolve())
    code, _, err = cli("run", str(HERE / "adder.yaml"), "-i", "a=1", "-i", "b=2", "--queue", "--model", "big",
                       "--db", postgres)
    assert code == 2 and "--model and --queue" in err and "Traceback" not in err


def test_a_worker_that_lost_its_run_stores_nothing_of_it_not_even_agent_data_or_a_question(
        postgres: str) -> None:  # noqa: F811
    first, second = Storage(postgres), Storage(postgres)
    root = "f" * 32
    first.start_run(RunRow(id=root, agent="A", flow="a.yaml", status=RunStatus.QUEUED, created=time.time(), epoch=0))
    taken_over(first, second, root)
    second.put("A", "k", "by-the-new-owner")
    with pytest.raises(Fenced):  # a `remember` of the run in the worker that lost it
        asyncio.run(Kernel(ScriptedBackend([]), first).store("A", root, "k", "by-the-worker-that-lost-it"))
    with pytest.raises(Fenced):
        first.set_asking(root, {"step": "ask", "prompt": "stale"})
    first.later(first.supersede, [], [], root)  # queued: dropped, and no other run's write fails for it
    first.flush()
    assert second.get("A", "k") == "by-the-new-owner" and second.find_run(root).asking is None


def test_a_preempted_model_call_of_a_run_taken_over_fails_its_caller_instead_of_hanging(
        postgres: str) -> None:  # noqa: F811
    first, second = Storage(postgres), Storage(postgres)
    lost, kept = "f" * 32, "e" * 32
    for run_id in (lost, kept):
        first.start_run(RunRow(id=run_id, agent="A", flow="a.yaml", status=RunStatus.QUEUED, created=time.time(),
                               epoch=0))
        first.fences.fence(run_id, first.claim_run(run_id, (RunStatus.QUEUED, None), MINE, queue=True))
    assert second.claim_run(lost, (RunStatus.RUNNING, 1), THEIRS, queue=True) == 2
    backend = ScriptedBackend.from_responses([{"key": "a", "times": 10, "text": " ".join(["w"] * 40)}],
                                             token_delay=0.001)
    kernel = Kernel(backend, first, policy=Policy.RR, slice_tokens=2)  # its snapshot is stored when preempted

    async def both() -> list[object]:
        calls = [kernel.generate("A", run_id, Request([{"role": "user", "content": "x"}], key="a"))
                 for run_id in (lost, kept)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 15)

    failed, answered = asyncio.run(both())
    assert isinstance(failed, Fenced) and answered.text == " ".join(["w"] * 40)


def test_a_second_job_of_a_run_this_worker_runs_leaves_it_fenced(postgres: str, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "answers.yaml").write_text(json.dumps(ANSWERS))
    relay = offered(tmp_path / "flows", RELAY, "relay")
    storage, other = Storage(postgres), Storage(postgres)
    service = Service(kernel_for([relay.checked], read_cassette(tmp_path / "answers.yaml"), storage,
                                 workspaces=tmp_path / "ws"))

    async def go() -> object:
        (run_id,) = await enqueue(storage, relay.checked, [{"n": 1}], file=str(relay.path))
        first = asyncio.ensure_future(worker.run(service, {"Relay": relay}, run_id))
        while not other.of_runs(StepRow, [run_id]):
            await asyncio.sleep(0.02)
        assert await worker.run(service, {"Relay": relay}, run_id) is None  # its job queued again: not taken twice
        row = other.find_run(run_id)  # then this worker stalls, and another one takes the run over
        assert other.claim_run(run_id, (row.status, row.pid), THEIRS, queue=True)
        return await first

    assert asyncio.run(go()) == RunStatus.LOST


def test_a_queued_run_is_a_workers_and_a_live_worker_keeps_its_run(postgres: str, tmp_path: Path,  # noqa: F811
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("run", str(HERE / "adder.yaml"), "-i", "a=1", "-i", "b=2", "--queue", "--db", postgres,
                         "--json")
    run_id = json.loads(out)["run_id"]
    code, _, err = cli("runs", "resume", run_id, "--backend", "scripted", "--cassette",
                       str(HERE / "ledger.cassette.yaml"), "--db", postgres)
    assert code != 0 and "queued: a worker starts it" in err
    flow = offered(tmp_path, COUNTER, "counter")
    storage = Storage(postgres)
    (run_id,) = asyncio.run(enqueue(storage, flow.checked, [{"city": "Oslo"}], file=str(flow.path)))
    storage.claim_run(run_id, (RunStatus.QUEUED, None), MINE, queue=True)  # a worker runs it, heartbeat fresh

    async def alive() -> bool:
        return True

    service = Service(kernel_for([flow.checked], ScriptedBackend([]), storage))
    assert asyncio.run(worker.run(service, {"Counter": flow}, run_id, live=alive)) is None
    assert storage.find_run(run_id).host == "a"


def queued_with_no_job(storage: Storage, flow: Offered, monkeypatch: pytest.MonkeyPatch) -> str:
    """A run of `flow` stored queued whose job was never deferred (its process stopped between the two)."""
    from engine.worker import queue

    async def nothing(app: object, run_ids: list[str], *, again: bool = True) -> None:
        return None

    with monkeypatch.context() as patched:
        patched.setattr(queue, "defer", nothing)
        (run_id,) = asyncio.run(enqueue(storage, flow.checked, [{"city": "Lima"}], file=str(flow.path)))
    return run_id


def test_a_run_of_the_queue_with_no_job_is_queued_again_by_the_sweep(postgres: str, tmp_path: Path,  # noqa: F811
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A process stopped between storing a run and queueing its job (or a database error between a stalled job's
    end and its run's new job): the run is queued again, and a worker finishes it."""
    flow = offered(tmp_path, COUNTER, "counter")
    storage = Storage(postgres)
    run_id = queued_with_no_job(storage, flow, monkeypatch)
    service = Service(kernel_for([flow.checked], ScriptedBackend([]), storage))

    async def work_a_while() -> None:
        task = asyncio.ensure_future(worker.work(service, {"Counter": flow}, concurrency=2, stall=1, name="w"))
        deadline = time.monotonic() + 30
        while storage.find_run(run_id).status != RunStatus.FINISHED and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(work_a_while())
    assert storage.find_run(run_id).status == RunStatus.FINISHED


def test_the_sweep_goes_on_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    looks: list[int] = []

    async def failing(app: object, storage: object, stall: float) -> None:
        looks.append(1)
        raise ConnectionError("the database went away for a moment")

    monkeypatch.setattr(worker, "_sweep_once", failing)

    async def go() -> None:
        task = asyncio.ensure_future(worker.sweep(SimpleNamespace(), None, 0.2))
        await asyncio.sleep(0.7)
        assert not task.done()
        task.cancel()

    asyncio.run(go())
    assert len(looks) >= 3


def test_a_worker_frozen_in_a_write_holds_the_next_owner_up_for_the_stall_time_only(
        postgres: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    frozen, taker = Storage(postgres), Storage(postgres)
    frozen.end_idle_transactions(1.0)
    root = "f" * 32
    frozen.start_run(RunRow(id=root, agent="A", flow="a.yaml", status=RunStatus.QUEUED, created=time.time(), epoch=0))
    frozen.fences.fence(root, frozen.claim_run(root, (RunStatus.QUEUED, None), MINE, queue=True))
    thaw, real = threading.Event(), frozen.fences.lost

    def freezing(db: object, run_ids: object) -> set[str]:  # SIGSTOP inside its transaction, the row locked
        found = real(db, run_ids)
        thaw.wait(30)
        return found

    monkeypatch.setattr(frozen.fences, "lost", freezing)
    frozen.record_syscall(Syscall(SyscallKind.GENERATE, "A", root))
    time.sleep(0.3)
    started = time.monotonic()
    assert taker.claim_run(root, (RunStatus.RUNNING, 1), THEIRS, queue=True) == 2  # its session ended by the server
    assert time.monotonic() - started < 10
    thaw.set()


def _copy(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("team_ledger.yaml", "tally.yaml"):
        shutil.copy(HERE / name, folder / name)
    return folder


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])
def test_a_run_with_child_runs_is_taken_over_from_a_worker_elsewhere_killed_or_frozen_here(
        postgres: str, tmp_path: Path, how: signal.Signals) -> None:  # noqa: F811
    """team_ledger (a map, a parallel step, agents), queued from one folder and run by workers whose flows are in
    another: a worker killed, or frozen on this machine, while a child run goes on."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    queued_from, flows = _copy(tmp_path / "a"), _copy(tmp_path / "b")
    done = subprocess.run([sys.executable, "-m", "engine", "run", str(queued_from / "team_ledger.yaml"), "--tools",
                           str(HERE), "-i", "purchases=apples 3, bread 2 and milk 1.5", "--queue", "--db", postgres,
                           "--json"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    root = json.loads(done.stdout)["run_id"]
    first = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--flows", str(flows), "--tools", str(HERE),
                              "--backend", "scripted", "--cassette", str(HERE / "team_ledger.cassette.yaml"),
                              "--stall", "3", "--db", postgres], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    storage = Storage(postgres)
    try:
        deadline = time.monotonic() + 90
        while not [r for r in storage.rows(RunRow) if r.parent == root and r.status == RunStatus.RUNNING]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        first.send_signal(how)
        catalog = load_catalog([flows], [HERE])
        kernel = kernel_for([f.checked for f in catalog.values()], read_cassette(HERE / "team_ledger.cassette.yaml"),
                            Storage(postgres), workspaces=tmp_path / ".flowrun" / "workspaces")
        assert asyncio.run(worker.run(Service(kernel), catalog, root)) == RunStatus.FINISHED
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
        first.wait()
    assert Storage(postgres).find_run(root).status == RunStatus.FINISHED


def test_a_worker_that_lost_its_run_calls_not_even_an_idempotent_tool(postgres: str) -> None:  # noqa: F811
    from engine.kernel.tools import Tool

    first, second = Storage(postgres), Storage(postgres)
    root = "f" * 32
    first.start_run(RunRow(id=root, agent="A", flow="a.yaml", status=RunStatus.QUEUED, created=time.time(), epoch=0))
    taken_over(first, second, root)
    called: list[str] = []
    writes = Tool("write", "writes a file", {"type": "object"}, lambda: called.append("written"), idempotent=True)
    kernel = Kernel(ScriptedBackend([]), first, tools=[writes])
    kernel.open_run(root, "A", ["write"])
    with pytest.raises(Fenced):
        asyncio.run(kernel.call_tool("A", root, "write", {}))
    assert called == []


def test_a_run_paused_on_a_worker_has_its_job_tried_again(postgres: str, tmp_path: Path) -> None:  # noqa: F811
    """Its model stayed away past the kernel's retries: the job fails, for Procrastinate to try it later."""
    from sqlalchemy import text

    from engine.kernel.retry import Backoff
    from engine.llm.base import ModelUnavailable

    class Away(ScriptedBackend):
        async def generate(self, request, on_token, resume=None):
            raise ModelUnavailable("the model server is down")

    relay = offered(tmp_path / "flows", RELAY, "relay")
    storage = Storage(postgres)
    kernel = kernel_for([relay.checked], Away([]), storage)
    kernel.retry = Backoff(attempts=1)
    (run_id,) = asyncio.run(enqueue(storage, relay.checked, [{"n": 1}], file=str(relay.path)))

    async def work_a_while() -> None:
        task = asyncio.ensure_future(worker.work(Service(kernel), {"Relay": relay}, concurrency=1, stall=5, name="w"))
        await asyncio.sleep(8)  # the first try, and the second one 5 s later
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(work_a_while())
    with storage.engine.connect() as db:
        attempts = db.execute(text("SELECT attempts FROM procrastinate_jobs WHERE args->>'run_id' = :run"),
                              {"run": run_id}).scalar()
    assert attempts >= 2 and storage.find_run(run_id).status == RunStatus.PAUSED


def test_a_run_of_the_queue_a_person_resumes_leaves_the_queue(postgres: str, tmp_path: Path) -> None:  # noqa: F811
    """Paused on a worker, resumed by hand (`flowrun runs resume`): the workers leave it alone from then on."""
    from engine.interpreter.resume import stopped
    from engine.kernel.retry import Backoff
    from engine.llm.base import ModelUnavailable

    class Away(ScriptedBackend):
        async def generate(self, request, on_token, resume=None):
            raise ModelUnavailable("the model server is down")

    (tmp_path / "answers.yaml").write_text(json.dumps(ANSWERS))
    relay = offered(tmp_path / "flows", RELAY, "relay")
    storage = Storage(postgres)
    away = kernel_for([relay.checked], Away([]), storage)
    away.retry = Backoff(attempts=1)
    (run_id,) = asyncio.run(enqueue(storage, relay.checked, [{"n": 1}], file=str(relay.path)))
    assert asyncio.run(worker.run(Service(away), {"Relay": relay}, run_id)) == RunStatus.PAUSED
    by_hand = Service(kernel_for([relay.checked], read_cassette(tmp_path / "answers.yaml"), storage,
                                 workspaces=tmp_path / "ws"))

    async def resumed() -> object:
        return await by_hand.to_end(by_hand.resume(relay.checked, stopped(storage, run_id), file=str(relay.path)))

    assert asyncio.run(resumed()).status == RunStatus.FINISHED
    assert not of_queue(storage.find_run(run_id))
    assert asyncio.run(worker.run(Service(away), {"Relay": relay}, run_id)) is None


def test_the_events_of_a_run_queued_again_go_on_to_its_new_end(postgres: str, tmp_path: Path) -> None:  # noqa: F811
    """A stopped run of the queue, queued again (serve --queue's resume): its old end is not the stream's end."""
    flow = offered(tmp_path, COUNTER, "counter")
    storage = Storage(postgres)
    service = Service(kernel_for([flow.checked], ScriptedBackend([]), storage))
    (run_id,) = asyncio.run(enqueue(storage, flow.checked, [{"city": "Oslo"}], file=str(flow.path)))
    storage.claim_run(run_id, (RunStatus.QUEUED, None), MINE, queue=True)
    asyncio.run(storage.commit_finish_run(run_id, RunStatus.INTERRUPTED, error="stopped", events=1))
    storage.join_queue(run_id)

    async def follow_while_a_worker_runs_it() -> list[str]:
        following = asyncio.ensure_future(_kinds(service, run_id))
        await asyncio.sleep(1)
        assert not following.done()
        assert await worker.run(service, {"Counter": flow}, run_id) == RunStatus.FINISHED
        return await asyncio.wait_for(following, 10)

    assert asyncio.run(follow_while_a_worker_runs_it())[-1] == "run.ended"
    assert storage.find_run(run_id).status == RunStatus.FINISHED


async def _kinds(service: Service, run_id: str) -> list[str]:
    return [event.type async for event in service.events(run_id)]


def test_a_run_of_the_queue_answered_goes_back_to_the_workers(postgres: str, tmp_path: Path) -> None:  # noqa: F811
    """It waits for a person on a worker; `flowrun runs answer` queues it again instead of running it there."""
    from tests.test_trace import ASKER

    asker = offered(tmp_path / "flows", ASKER, "asker")
    storage = Storage(postgres)
    service = Service(kernel_for([asker.checked], ScriptedBackend([]), storage))
    (run_id,) = asyncio.run(enqueue(storage, asker.checked, [{}], file=str(asker.path)))
    assert asyncio.run(worker.run(service, {"Asker": asker}, run_id)) == RunStatus.WAITING
    code, _, err = cli("runs", "answer", run_id, "--text", "yes", "--db", postgres)
    assert code == 0 and "queued again for `flowrun worker`" in err, err
    assert storage.find_run(run_id).status == RunStatus.QUEUED
    assert asyncio.run(worker.run(service, {"Asker": asker}, run_id)) == RunStatus.FINISHED
    assert storage.find_run(run_id).answer == "yes"


def test_a_run_of_the_queue_is_cancelled_from_another_process_queued_or_on_a_worker(
        postgres: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """serve --queue's cancel: a queued run leaves the queue; one a worker runs stops there at its next write (the
    worker is fenced out, and says a person may have cancelled it); both end interrupted, left to a person, and a
    job of theirs does nothing."""
    (tmp_path / "answers.yaml").write_text(json.dumps(ANSWERS))
    relay = offered(tmp_path / "flows", RELAY, "relay")
    storage = Storage(postgres)
    on_worker = Service(kernel_for([relay.checked], read_cassette(tmp_path / "answers.yaml"), storage,
                                   workspaces=tmp_path / "ws"))
    serving = Service(kernel_for([relay.checked], ScriptedBackend([]), Storage(postgres)))
    running, waiting = asyncio.run(enqueue(storage, relay.checked, [{"n": 1}, {"n": 2}], file=str(relay.path)))

    async def cancel_both() -> tuple[object, ...]:
        taken = asyncio.ensure_future(worker.run(on_worker, {"Relay": relay}, running))
        while not storage.of_runs(StepRow, [running]):  # a step in
            await asyncio.sleep(0.05)
        on, queued = await serving.cancel(running), await serving.cancel(waiting)
        cancelled = time.time()
        return on, queued, await asyncio.wait_for(taken, 30), cancelled

    on, queued, ended, cancelled = asyncio.run(cancel_both())
    assert (on.status, on.error, queued.status, queued.error) == (
        RunStatus.INTERRUPTED, "cancelled while running", RunStatus.INTERRUPTED, "cancelled while queued")
    assert ended == RunStatus.LOST  # on the worker: it stopped, storing nothing more
    assert "or a person cancelled or resumed it" in capfd.readouterr().err
    assert all(step.finished < cancelled for step in storage.of_runs(StepRow, [running]))
    for run_id in (running, waiting):
        stored = storage.find_run(run_id)
        assert stored.status == RunStatus.INTERRUPTED and not of_queue(stored)
        assert asyncio.run(worker.run(on_worker, {"Relay": relay}, run_id)) is None  # its job, if it comes
    with pytest.raises(NotInFlight, match="nothing to cancel"):
        asyncio.run(serving.cancel(running))


def test_a_run_queued_again_goes_ahead_of_the_runs_not_started(postgres: str, tmp_path: Path) -> None:  # noqa: F811
    """A run taken over from a worker that died (queued again by the sweep) is the next one a worker takes, not
    the last of a long queue: behind one, it waited for the whole queue to start first."""
    from engine.worker.queue import QUEUE, app_for, defer

    flow = offered(tmp_path, COUNTER, "counter")
    storage = Storage(postgres)

    async def taken_in_turn() -> tuple[list[str], list[str]]:
        ids = await enqueue(storage, flow.checked, [{"city": city} for city in ("Oslo", "Rome", "Lima")],
                            file=str(flow.path))
        async with (app := app_for(storage)).open_async():
            await defer(app, [ids[2]])  # as the sweep does
            worker_id = await app.job_manager.register_worker()
            jobs = [await app.job_manager.fetch_job([QUEUE], worker_id) for _ in range(4)]
        return ids, [job.task_kwargs["run_id"] for job in jobs]

    ids, taken = asyncio.run(taken_in_turn())
    assert taken == [ids[2], ids[0], ids[1], ids[2]]


def queued_row(storage: Storage, run_id: str, status: RunStatus = RunStatus.QUEUED, epoch: int = 0) -> None:
    storage.start_run(RunRow(id=run_id, agent="A", flow="a.yaml", status=status, created=time.time(), epoch=epoch))


def test_a_run_cancelled_then_queued_again_keeps_the_cancelled_worker_fenced_out(
        postgres: str) -> None:  # noqa: F811
    """Worker 1 runs a run (epoch 1), in a long model call; serve --queue cancels it, then a person resumes it
    through serve --queue (queue_again) and worker 2 claims it: with a new epoch, not 1 again (a cancel cleared the
    epoch, and queueing it again set it to 0). Worker 1, whose next write comes now, is still fenced out."""
    first, serving_db, second = Storage(postgres), Storage(postgres), Storage(postgres)
    run_id = "c1" * 16
    queued_row(first, run_id)
    first.fences.fence(run_id, first.claim_run(run_id, (RunStatus.QUEUED, None), MINE, queue=True))
    serving = Service(Kernel(ScriptedBackend([]), serving_db))
    assert asyncio.run(serving.cancel(run_id)).status == RunStatus.INTERRUPTED
    with pytest.raises(Fenced):
        first.hold(run_id)  # fenced out by the cancel: fine so far
    asyncio.run(queue_again(serving_db, run_id))  # POST /runs/{id}/resume on serve --queue
    row = second.find_run(run_id)
    assert row.status == RunStatus.QUEUED
    assert second.claim_run(run_id, (row.status, row.pid), THEIRS, queue=True) == 3  # 1, taken out (-2), 3
    with pytest.raises(Fenced):
        first.hold(run_id)  # worker 1 writes on beside worker 2


def test_events_of_a_cancelled_run_of_the_queue_end_with_its_run_ended(postgres: str) -> None:  # noqa: F811
    """GET /runs/{id}/events of serve --queue follows a run 'to its run.ended'; a follower that was waiting when
    the run was cancelled, and one that comes after, should both get it."""
    storage = Storage(postgres)
    run_id = "c2" * 16
    queued_row(storage, run_id)
    serving = Service(Kernel(ScriptedBackend([]), storage))

    async def follow_and_cancel() -> tuple[list[object], list[object]]:
        async def follow() -> list[object]:
            return [event async for event in serving.events(run_id)]
        following = asyncio.ensure_future(follow())
        await asyncio.sleep(0.2)
        await serving.cancel(run_id)
        during = await asyncio.wait_for(following, 10)
        return during, await follow()

    during, after = asyncio.run(follow_and_cancel())
    assert storage.find_run(run_id).status == RunStatus.INTERRUPTED
    assert [type(e).__name__ for e in during] == ["RunEnded"]
    assert [type(e).__name__ for e in after] == ["RunEnded"]


def test_the_sweep_queues_a_run_never_started_behind_the_runs_queued_again(
        postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A run whose job was never deferred (the process stopped between) was not started: it waits its turn behind
    the runs queued again (priority 0), as a run queued at once does."""
    from engine.worker import queue

    storage = Storage(postgres)
    run_id = queued_with_no_job(storage, offered(tmp_path, COUNTER, "counter"), monkeypatch)
    time.sleep(1.2)

    async def sweep_once() -> None:
        async with (app := queue.app_for(storage)).open_async():
            await worker._sweep_once(app, storage, 1.0)

    asyncio.run(sweep_once())
    with storage.engine.connect() as db:
        priorities = db.execute(text("SELECT priority FROM procrastinate_jobs WHERE args->>'run_id' = :run"),
                                {"run": run_id}).scalars().all()
    assert storage.find_run(run_id).status == RunStatus.QUEUED and priorities == [0]


def test_cancel_of_a_waiting_run_of_the_queue_says_what_is_true(postgres: str) -> None:  # noqa: F811
    """A run of the queue waiting for a person (its question's timeout, or an answer, sends it back to the
    workers) is refused, saying why (not that it is not the queue's)."""
    storage = Storage(postgres)
    run_id = "c5" * 16
    queued_row(storage, run_id, RunStatus.WAITING, epoch=1)
    serving = Service(Kernel(ScriptedBackend([]), storage))
    with pytest.raises(NotInFlight) as refused:
        asyncio.run(serving.cancel(run_id))
    assert "is waiting: not running in this process, nor queued for workers" in str(refused.value)


def test_a_worker_whose_run_was_cancelled_then_queued_again_stops_for_the_next_one(
        postgres: str, tmp_path: Path) -> None:  # noqa: F811
    """End to end: worker 1 is in a model call when serve --queue cancels its run; a person resumes it through
    serve --queue (queue_again) and worker 2 takes it. Worker 1 is fenced out (LOST, nothing more written): the
    ledger tool, not idempotent, is called once, and the run finished (worker 1 stored it failed over it)."""
    slow, fast = dict(ANSWERS, token_delay=0.15), dict(ANSWERS, token_delay=0.0)
    (tmp_path / "slow.yaml").write_text(json.dumps(slow))
    (tmp_path / "fast.yaml").write_text(json.dumps(fast))
    relay = offered(tmp_path / "flows", RELAY, "relay")
    storage, other, serving_db = Storage(postgres), Storage(postgres), Storage(postgres)
    first = Service(kernel_for([relay.checked], read_cassette(tmp_path / "slow.yaml"), storage,
                               workspaces=tmp_path / "ws"))
    second = Service(kernel_for([relay.checked], read_cassette(tmp_path / "fast.yaml"), other,
                                workspaces=tmp_path / "ws"))
    serving = Service(kernel_for([relay.checked], ScriptedBackend([]), serving_db))
    (run_id,) = asyncio.run(enqueue(storage, relay.checked, [{"n": 1}], file=str(relay.path)))

    async def both() -> tuple[object, object]:
        one = asyncio.ensure_future(worker.run(first, {"Relay": relay}, run_id))
        while not storage.of_runs(StepRow, [run_id]):  # step `think` stored: worker 1 asks for `note`
            await asyncio.sleep(0.02)
        await serving.cancel(run_id)
        await serving_db.commit(serving_db.join_queue, run_id)  # what queue_again stores (its job aside)
        two = await worker.run(second, {"Relay": relay}, run_id)
        return await asyncio.wait_for(one, 60), two

    one, two = asyncio.run(both())
    calls = (tmp_path / "ws" / run_id / "calls.log")
    logged = calls.read_text().splitlines() if calls.exists() else []
    stored = storage.find_run(run_id)
    assert (one, two, stored.status, len(logged)) == (RunStatus.LOST, RunStatus.FINISHED, RunStatus.FINISHED, 1), \
        (stored.error, logged)


MAPPER = """\
flowrun: 1
name: Mapper
inputs:
  xs: {type: array, items: {type: integer}}
steps:
  each:
    kind: map
    items: "{{ inputs.xs }}"
    steps:
      solve: {kind: process, instruction: "Solve {{ item }}.", next: said}
      said: {kind: terminal, output: "{{ steps.solve.output }}"}
    next: done
  done: {kind: terminal, output: "{{ steps.each.output }}"}
"""


def test_a_cancelled_run_of_the_queue_can_be_resumed_by_a_person_on_the_workers_machine(
        postgres: str, tmp_path: Path) -> None:  # noqa: F811
    """A cancel leaves the run stored interrupted for a person to resume, its child runs too: the fenced-out worker
    could not end them, and left `running` under its (live) pid they failed a person's resume on its machine."""

    mapper = offered(tmp_path / "flows", MAPPER, "mapper")
    storage = Storage(postgres)
    answers = [{"text": " ".join(["w"] * 30), "times": 100}]
    on_worker = Service(kernel_for([mapper.checked], ScriptedBackend.from_responses(answers, token_delay=0.05),
                                   storage))
    person = Service(kernel_for([mapper.checked], ScriptedBackend.from_responses(answers), Storage(postgres)))
    serving = Service(kernel_for([mapper.checked], ScriptedBackend([]), Storage(postgres)))
    (run_id,) = asyncio.run(enqueue(storage, mapper.checked, [{"xs": [1, 2]}], file=str(mapper.path)))

    async def cancel_then_resume() -> tuple[object, list[tuple[str, int | None]], object]:
        taken = asyncio.ensure_future(worker.run(on_worker, {"Mapper": mapper}, run_id))
        while not storage.children([run_id]):
            assert not taken.done(), (taken.result(), storage.find_run(run_id).error)
            await asyncio.sleep(0.02)
        await serving.cancel(run_id)
        lost = await asyncio.wait_for(taken, 30)
        left = [(child.status, child.pid) for child in storage.children([run_id])]
        followed = [[event.type async for event in serving.events(child.id)] for child in storage.children([run_id])]
        found = await person.stopped(run_id)
        ended = await person.to_end(person.resume(mapper.checked, found, file=str(mapper.path)))
        return lost, left, followed, ended

    lost, left, followed, ended = asyncio.run(cancel_then_resume())
    assert lost == RunStatus.LOST and [status for status, _ in left] == ["interrupted", "interrupted"]
    assert [events[-1:] for events in followed] == [["run.ended"]] * 2  # their streams end, as the run's does
    assert ended.status == RunStatus.FINISHED, ended.error


def test_a_worker_does_not_claim_a_run_taken_out_of_the_queue_that_looks_as_it_read_it(
        postgres: str) -> None:  # noqa: F811
    """A worker read a run of the queue (interrupted, pid 1); serve --queue, pid 1 on another host (containers),
    cancels it, leaving status and pid as they were: the worker's claim, on (status, pid), must not undo that."""
    storage, serving_db, other = Storage(postgres), Storage(postgres), Storage(postgres)
    run_id = "d2" * 16
    storage.start_run(RunRow(id=run_id, agent="A", flow="a.yaml", status=RunStatus.INTERRUPTED, created=time.time(),
                             epoch=2, host="w1", pid=1, pid_started=1.0))
    read = other.find_run(run_id)
    assert serving_db.take_out(run_id, (read.status, read.pid), {"host": "s", "pid": 1, "pid_started": 5.0},
                               RunStatus.INTERRUPTED, "cancelled while interrupted")
    assert other.claim_run(run_id, (read.status, read.pid), {"host": "w2", "pid": 1, "pid_started": 6.0},
                           queue=True) is None
    assert not of_queue(storage.find_run(run_id))
