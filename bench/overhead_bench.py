"""The interpreter's overhead per step: a 1,000-step linear flow on an instant scripted backend, stored in SQLite.

Each step is a model call whose answer is one token, so almost all of a step's time is flowrun's own: rendering the
prompt, fitting it to the window, scheduling the syscall, committing its record, the step's record and its progress
to SQLite (durably: every step is committed before the next one starts), and walking on. Goal: median <= 1 ms.

Baselines measured in the same run: the backend's own time per call (subtracted: it is not overhead), and the
cost of one bare SQLite INSERT + COMMIT (sqlite3, same pragmas), the floor of any durable per-step record.

With --trace, each repeat runs twice: without telemetry, and exporting its spans and metrics over OTLP/HTTP to a
receiver on loopback (the otel extra): the per-step figures of both, and what the export adds to the run's wall
time.

    python bench/overhead_bench.py [--steps 1000] [--repeat 3] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import itertools
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from engine import telemetry
from engine.errors import RunStatus
from engine.flow.validate import check_flow_text
from engine.interpreter.setup import kernel_for
from engine.interpreter.walk import run_flow
from engine.kernel.storage import Storage
from engine.kernel.tables import StepRow
from engine.llm.base import Request
from engine.llm.scripted import ScriptedBackend


def linear_flow(steps: int) -> str:
    lines = ["flowrun: 1", "name: Linear", "description: A long line of steps.", "inputs:",
             "  topic: {type: string}", f"limits: {{max_steps: {steps + 1}}}", "steps:"]
    for n in range(steps):
        lines += [f"  s{n}:", "    kind: process", f"    instruction: Step {n} on {{{{ inputs.topic }}}}.",
                  f"    next: s{n + 1}"]
    lines += [f"  s{steps}:", "    kind: terminal", "    instruction: Done."]
    return "\n".join(lines) + "\n"


def run_once(steps: int, folder: Path, *, trace: bool = False) -> tuple[float, list[float]]:
    """Wall time of one run, and each step's time (from its start to the next step's start); with `trace`, its
    spans exported as OTEL_EXPORTER_OTLP_ENDPOINT says."""
    checked = check_flow_text(linear_flow(steps), "linear.yaml", {})
    assert checked.ok, checked.diagnostics
    backend = ScriptedBackend.from_responses([{"text": "ok", "times": steps + 1}])
    storage = Storage(f"sqlite:///{folder / 'bench.db'}")
    kernel = kernel_for([checked], backend, storage)
    if trace:
        telemetry.install(kernel, backend.name)
    started = time.perf_counter()
    outcome = asyncio.run(run_flow(kernel, checked.compiled, {"topic": "x"}, file="linear.yaml"))
    wall = time.perf_counter() - started
    assert outcome.status == RunStatus.FINISHED, outcome.error
    rows = storage.of_runs(StepRow, [outcome.run_id])
    assert len(rows) == steps + 1  # every step was committed
    starts = [row.started for row in rows]
    return wall, [b - a for a, b in itertools.pairwise(starts)]


class Receiver(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every request and counts its bytes."""

    received = 0

    def do_POST(self) -> None:
        Receiver.received += len(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def traced(steps: int, folder: Path) -> tuple[float, list[float], float]:
    """run_once, its spans and metrics exported (to the receiver `main` starts); and the seconds building and
    sending them took after the run's end."""
    wall, per_step = run_once(steps, folder, trace=True)
    started = time.perf_counter()
    telemetry.flush()
    return wall, per_step, time.perf_counter() - started


def backend_per_call(calls: int) -> float:
    """Median seconds of one bare call of the scripted backend (no kernel, no storage)."""
    backend = ScriptedBackend.from_responses([{"text": "ok", "times": calls}])
    request = Request([{"role": "user", "content": "Step on x."}])

    async def measure() -> list[float]:
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            await backend.generate(request, lambda _: False)
            times.append(time.perf_counter() - started)
        return times

    return statistics.median(asyncio.run(measure()))


def commit_per_row(rows: int, folder: Path) -> float:
    """Median seconds of one INSERT + COMMIT with sqlite3 (WAL, synchronous=NORMAL)."""
    db = sqlite3.connect(folder / "bare.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, step TEXT, output TEXT, started REAL)")
    times = []
    for n in range(rows):
        started = time.perf_counter()
        db.execute("INSERT INTO t (step, output, started) VALUES (?, ?, ?)", (f"s{n}", "ok", time.time()))
        db.commit()
        times.append(time.perf_counter() - started)
    db.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trace", action="store_true",
                        help="Also run each repeat exporting its spans and metrics over OTLP.")
    args = parser.parse_args()
    backend = backend_per_call(args.steps)
    if args.trace:  # one receiver for every repeat: the process's exporters are made once, for one endpoint
        receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{receiver.server_port}"
    for n in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            wall, per_step = run_once(args.steps, Path(tmp))
            commit = commit_per_row(args.steps, Path(tmp))
        median = statistics.median(per_step)
        p90 = statistics.quantiles(per_step, n=10)[-1]
        overhead = median - backend
        print(f"run {n + 1}: {args.steps} steps in {wall:.2f} s; per step median {median * 1e3:.3f} ms, "
              f"p90 {p90 * 1e3:.3f} ms; backend {backend * 1e3:.3f} ms; overhead {overhead * 1e3:.3f} ms "
              f"(goal <= 1 ms); bare SQLite commit {commit * 1e3:.3f} ms: overhead/commit = {overhead / commit:.1f}x")
        if args.trace:
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint  # only while traced runs go
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    traced_wall, traced_steps, sending = traced(args.steps, Path(tmp))
            finally:
                del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
            on = statistics.median(traced_steps)
            print(f"      traced: {args.steps} steps in {traced_wall:.2f} s ({traced_wall / wall:.2f}x untraced); "
                  f"per step median {on * 1e3:.3f} ms ({on / median:.2f}x); building and sending the spans and "
                  f"metrics after the run's end took {sending:.2f} s more, off the event loop "
                  f"({Receiver.received:,} bytes of OTLP received so far)")


if __name__ == "__main__":
    main()
