"""Workers at scale: N runs (default 500) of a flow of S model steps (default 10), queued in PostgreSQL and taken
by 1, 2 and 4 `flowrun worker` processes, on a simulated model pool with enough slots (each worker's scripted
backend, one slot per run it takes at once) where every model call takes a fixed time (default 200 ms).

For each number of workers: runs per second, from the first run queued to the last finished, and the scaling
against one worker measured in the same run (goal: 4 workers >= 3.5x one). The workers, PostgreSQL and this
process share the machine's cores, so a small machine bounds it: each line also says the workers' CPU time per run
and how busy the machine's cores were (on 2 cores, waits for a turn on one slow every step down well before 100%).
Then, as a control, the most workers take one worker's load between them (each --concurrency / N runs at once): about 1x
one worker says that runs split among processes cost nothing more, so what the series loses is the machine's.

Then, with the most workers, one is killed (SIGKILL) midway: how long until its runs move on (from the kill to each
one's next step stored by another worker: the stall time, `--stall`, is most of it) and that every run still
finishes.

    python bench/scale_bench.py --db postgresql+psycopg://USER@HOST/DB [--runs 500] [--steps 10] [--ms 200]
        [--workers 1 2 4] [--concurrency 32] [--stall 5]

The database should be one for the benchmark alone: its runs and the queue's jobs are deleted first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from lines import line_of_steps  # beside this file

from engine.errors import RunStatus
from engine.flow.validate import load_flow
from engine.kernel.storage import Storage
from engine.kernel.tables import StepRow
from engine.worker.queue import enqueue

ROOT = Path(__file__).resolve().parents[1]


def clear(storage: Storage) -> None:
    """Delete the benchmark's earlier runs and jobs."""
    with storage.engine.begin() as db:
        for table in ("steps", "syscalls", "tool_calls", "snapshots", "memories", "runs"):
            db.exec_driver_sql(f"DELETE FROM {table}")
        found = db.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar()
        if found is not None:
            db.exec_driver_sql("DELETE FROM procrastinate_jobs")


def start(count: int, folder: Path, db: str, concurrency: int, stall: float) -> list[subprocess.Popen[str]]:
    """`count` workers, once each says it is ready."""
    started = [subprocess.Popen(
        [sys.executable, "-m", "engine", "worker", "--flows", str(folder / "flows"), "--backend", "scripted",
         "--cassette", str(folder / "answers.yaml"), "--slots", str(concurrency), "--concurrency", str(concurrency),
         "--stall", str(stall), "--db", db], cwd=folder, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(count)]
    for process in started:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "takes runs" in line, line
    time.sleep(1)  # connected to the queue
    return started


def stop(workers: list[subprocess.Popen[str]]) -> None:
    for process in workers:
        if process.poll() is None:
            process.terminate()
    for process in workers:
        process.wait(timeout=120)


@dataclass
class Measured:
    rate: float  # runs per second
    cpu: float  # the workers' CPU seconds per run
    busy: float  # the share of the machine's cores busy, from the first run queued to the last finished
    moved: list[float]  # with a worker killed: the seconds each run it held took to move on


def cpu_of(workers: list[subprocess.Popen[str]]) -> float:
    """The CPU seconds the live `workers` used so far."""
    total = 0.0
    for process in workers:
        try:
            used = psutil.Process(process.pid).cpu_times()
        except psutil.NoSuchProcess:  # the one killed: its time is not counted
            continue
        total += used.user + used.system
    return total


def busy_since(then: Any) -> float:
    """The share of the machine's CPU time busy since `then` (psutil.cpu_times())."""
    now = psutil.cpu_times()
    idle = (now.idle + now.iowait) - (then.idle + then.iowait)
    total = sum(now) - sum(then)
    return 1 - idle / total if total else 0.0


def measure(count: int, runs: int, folder: Path, db: str, args: argparse.Namespace,
            kill_after: float | None = None, concurrency: int | None = None) -> Measured:
    """Runs per second with `count` workers (each taking `concurrency` runs at once, default --concurrency), their
    CPU time and the machine's; with `kill_after` (a share of the runs finished), the seconds each run of the worker
    killed then took to move on."""
    storage = Storage(db)
    clear(storage)
    workers = start(count, folder, db, concurrency or args.concurrency, args.stall)
    checked = load_flow(folder / "flows" / "steps.yaml")
    try:
        cpu, machine = cpu_of(workers), psutil.cpu_times()
        began = time.time()
        ids = asyncio.run(enqueue(storage, checked, [{}] * runs, file=str(folder / "flows" / "steps.yaml")))
        moved: list[float] = []
        killed = None
        while True:
            rows = storage.find_runs(limit=None)
            done = sum(r.status == RunStatus.FINISHED for r in rows)
            if kill_after is not None and killed is None and done >= kill_after * runs:
                victim = workers[0]
                held = [r.id for r in rows if r.pid == victim.pid and r.status == RunStatus.RUNNING]
                victim.send_signal(signal.SIGKILL)
                killed = (time.time(), held)
            if done == len(ids):
                cpu, busy = cpu_of(workers) - cpu, busy_since(machine)
                break
            if any(r.status not in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.FINISHED) for r in rows):
                raise SystemExit(f"a run ended otherwise: {[(r.id, r.status, r.error) for r in rows][:3]}")
            time.sleep(0.2)
        ended = max(r.finished or 0 for r in storage.find_runs(limit=None))
        if killed is not None:
            at, held = killed
            steps = storage.of_runs(StepRow, held)
            moved = [min(s.finished for s in steps if s.run_id == run and s.finished > at) - at for run in held
                     if any(s.run_id == run and s.finished > at for s in steps)]
        return Measured(runs / (ended - began), cpu / runs, busy, moved)
    finally:
        stop(workers)
        storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=os.environ.get("FLOWRUN_DB"), help="A PostgreSQL database for the benchmark")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--ms", type=float, default=200, help="Milliseconds a model call takes.")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=32, help="Runs each worker takes at once.")
    parser.add_argument("--stall", type=float, default=5.0)
    args = parser.parse_args()
    if not args.db or not args.db.startswith("postgresql"):
        raise SystemExit("give --db postgresql+psycopg://USER@HOST/DB (or FLOWRUN_DB): workers share PostgreSQL")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "flows").mkdir()
        (folder / "flows" / "steps.yaml").write_text(line_of_steps(args.steps))
        (folder / "answers.yaml").write_text(json.dumps({"token_delay": args.ms / 1000, "responses": [
            {"text": "ok", "times": args.runs * args.steps * 2}]}))
        one = None
        print(f"{psutil.cpu_count()} cores")
        for count in args.workers:
            got = measure(count, args.runs, folder, args.db, args)
            one = one or got.rate
            ideal = min(args.runs, count * args.concurrency) / (args.steps * args.ms / 1000)
            print(f"{count} worker{'s' * (count > 1)}: {args.runs} runs of {args.steps} steps, {got.rate:.1f} runs/s "
                  f"({got.rate / ideal:.2f}x the model's ideal {ideal:.1f}); {got.rate / one:.2f}x one worker, "
                  f"efficiency {got.rate / one / count:.0%}; workers' CPU {got.cpu * 1000:.1f} ms a run, machine "
                  f"{got.busy:.0%} busy")
        most = max(args.workers)
        if one is not None and args.workers[0] == 1 and most > 1 and args.concurrency % most == 0:
            share = args.concurrency // most
            got = measure(most, args.runs, folder, args.db, args, concurrency=share)
            print(f"{most} workers taking {share} runs at once each (one worker's {args.concurrency} in all): "
                  f"{got.rate:.1f} runs/s, {got.rate / one:.2f}x one worker; workers' CPU {got.cpu * 1000:.1f} ms "
                  f"a run, machine {got.busy:.0%} busy")
        if most > 1:
            got = measure(most, args.runs, folder, args.db, args, kill_after=0.3)
            print(f"{most} workers, one killed at 30%: {got.rate:.1f} runs/s; its {len(got.moved)} runs in flight "
                  f"moved on after median {statistics.median(got.moved) if got.moved else 0:.1f} s, at most "
                  f"{max(got.moved, default=0):.1f} s (stall {args.stall:g} s); every run finished")


if __name__ == "__main__":
    main()
