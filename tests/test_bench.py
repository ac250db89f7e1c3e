"""The benchmarks still run (tiny sizes): they measure the targets, so they must not rot."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


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
