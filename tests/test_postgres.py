"""Storage on a real PostgreSQL server: runs, resume, and many processes writing one database at once.

The server is started here, on loopback, from Debian's packages (installed first with apt-get when they are
missing and this runs as root); these tests are skipped, saying why, only when it truly cannot start.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow, StepRow, ToolCallRow
from tests.conftest import MATH_LOOP, ROOT
from tests.test_crash import HERE
from tests.test_run_cli import cli

pytestmark = pytest.mark.slow
PROCESSES, RUNS = 8, 10


def _program(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                                                  reverse=True)), None)
    return None if found is None else str(found)


def _install() -> str:
    """Install PostgreSQL from Debian's packages; what went wrong ("" when it worked)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "PostgreSQL is not installed, and installing it needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed: {done.stderr.strip()[-500:]}"
    return ""


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A PostgreSQL server on loopback for these tests: its URL without a database name."""
    if _program("initdb") is None and (problem := _install()):
        pytest.skip(problem)
    initdb, pg_ctl = _program("initdb"), _program("pg_ctl")
    assert initdb and pg_ctl
    home = Path(tempfile.mkdtemp(prefix="flowrun-postgres-"))  # not under pytest's folder, which only root enters
    data = home / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own user runs it
        shutil.chown(home, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    steps = ([*as_user, initdb, "-D", str(data), "-U", "flowrun", "--auth=trust", "-E", "UTF8"],
             [*as_user, pg_ctl, "-D", str(data), "-l", str(home / "log"), "-w", "-t", "60", "start", "-o",
              f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c max_connections=200"])
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.skip(f"PostgreSQL did not start: {done.stderr.strip()[-500:]}")
    yield f"postgresql+psycopg://flowrun@127.0.0.1:{port}"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True, timeout=120)
    shutil.rmtree(home, ignore_errors=True)


_names = itertools.count()


@pytest.fixture
def postgres(server: str) -> str:
    """The URL of a new, empty database on the server."""
    import psycopg

    name = f"flowrun_{os.getpid()}_{next(_names)}"
    with psycopg.connect(f"{server.replace('+psycopg', '')}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"


LEDGER = [str(HERE / "ledger.yaml"), "--tools", str(HERE), "--backend", "scripted"]
# Every run of a batch gets the same answers: the cassette's entries may each be given to all of them.
SAME_ANSWERS = """\
responses:
  - {key: plan, times: 1000, text: '{"subproblems": ["180 km in metres", "2.5 hours in seconds", "m/s"]}'}
  - {key: solve_next, times: 1000, text: '{"tool": "calculator", "arguments": {"expression": "180 * 1000"}}'}
  - {key: check_answer, times: 1000, text: '"yes"'}
  - {key: answer, times: 1000, text: '{"answer": "20 m/s"}'}
"""


def test_a_run_is_stored_interrupted_and_resumed_on_postgresql(postgres: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cassette = HERE / "ledger.cassette.yaml"
    process = subprocess.Popen([sys.executable, "-m", "engine", "run", *LEDGER, "--cassette", str(cassette),
                                "-i", "purchases=apples 3, bread 2 and milk 1.5", "--db", postgres],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    storage = Storage(postgres)
    deadline = time.monotonic() + 60
    while len(storage.rows(StepRow)) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    (run,) = storage.rows(RunRow)
    kept = [s.step for s in storage.rows(StepRow)]
    assert run.status == "interrupted" and len(kept) >= 3
    monkeypatch.chdir(tmp_path)  # where the run's workspace is
    code, out, err = cli("runs", "resume", run.id[:10], *LEDGER[1:], "--cassette", str(cassette), "--db", postgres,
                         "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "finished"
    steps = sorted(Storage(postgres).rows(StepRow), key=lambda s: s.id or 0)
    assert [s.step for s in steps] == ["plan", "record", "more", "record", "more", "record", "more", "check",
                                       "total", "summary"]
    ledger = (tmp_path / ".flowrun" / "workspaces" / run.id / "ledger.txt").read_text().splitlines()
    assert [line.split("\t")[1] for line in ledger] == ["apples 3", "bread 2", "milk 1.5"]  # each done once
    assert not [c for c in Storage(postgres).rows(ToolCallRow) if c.pending]
    code, out, _ = cli("runs", "show", run.id, "--db", postgres)
    assert code == 0 and "· finished" in out and "answer: You bought" in out


def test_processes_writing_one_database_at_once_lose_nothing(postgres: str, tmp_path: Path) -> None:
    (tmp_path / "answers.yaml").write_text(SAME_ANSWERS)
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"problem": f"train {n}: 180 km in 2.5 h, in m/s?"}) + "\n"
                              for n in range(RUNS)))
    batches = [subprocess.Popen(
        [sys.executable, "-m", "engine", "batch", str(MATH_LOOP), "--inputs", str(inputs),
         "--concurrency", "4", "--backend", "scripted", "--cassette", str(tmp_path / "answers.yaml"),
         "--db", postgres, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(PROCESSES)]
    results = [process.communicate(timeout=300) for process in batches]
    for process, (out, err) in zip(batches, results, strict=True):
        assert process.returncode == 0, err
        assert [r["status"] for r in json.loads(out)] == ["finished"] * RUNS
    storage = Storage(postgres)
    runs = storage.rows(RunRow)
    assert len(runs) == PROCESSES * RUNS and {r.status for r in runs} == {"finished"}
    assert len({r.batch for r in runs}) == PROCESSES
    assert {json.dumps(r.answer) for r in runs} == {json.dumps({"answer": "20 m/s"})}
    steps = storage.rows(StepRow)
    assert set(Counter(s.run_id for s in steps).values()) == {9}, "a run lost or doubled a step"
    assert len({(s.run_id, s.step, s.visit) for s in steps}) == len(steps)
    calls = storage.rows(ToolCallRow)
    assert Counter(c.run_id for c in calls) == {r.id: 3 for r in runs}
    assert all(c.result == {"expression": "180 * 1000", "result": 180000} for c in calls)
