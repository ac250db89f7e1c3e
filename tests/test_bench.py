"""The benchmarks still run (tiny sizes): they measure the targets, so they must not rot."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_postgres import postgres, server  # noqa: F401 (fixtures: a PostgreSQL server on loopback)


def bench(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_validate_bench_runs() -> None:
    out = bench("bench/validate_bench.py", "--files", "20", "--big-steps", "200", "--template-kb", "10")
    assert "validate 20 files" in out and "validate/baseline" in out and out.count("KB of template text") == 3


def test_scheduler_bench_runs() -> None:
    out = bench("bench/scheduler_bench.py", "--agents", "4", "--calls", "2", "--seconds", "0.01", "--slots", "1",
                "2", "--no-model")
    assert out.count("x ideal") == 4 and "k=2" in out


def test_serve_bench_runs() -> None:
    out = bench("bench/serve_bench.py", "--runs", "12", "--steps", "2", "--ms", "5", "--clients", "4", "--poll", "0.1")
    assert "x ideal" in out and "POST /runs p50" in out and "KiB a run in flight" in out and "every 0.1 s" in out


def test_map_bench_runs() -> None:
    out = bench("bench/map_bench.py", "--items", "4", "--seconds", "0.01", "--slots", "1", "2", "--no-model")
    assert out.count("x ideal") == 2 and "5 runs stored" in out


@pytest.mark.slow
def test_scale_bench_runs(postgres: str) -> None:  # noqa: F811 (the fixture)
    out = bench("bench/scale_bench.py", "--db", postgres, "--runs", "12", "--steps", "2", "--ms", "20",
                "--workers", "1", "2", "--concurrency", "4", "--stall", "2")
    assert "1 worker: 12 runs" in out and "2 workers: 12 runs" in out and "every run finished" in out
