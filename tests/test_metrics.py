"""engine.metrics on events as the kernel publishes them (tests/test_serve.py scrapes a real server)."""

from __future__ import annotations

from pathlib import Path

from engine.events import SyscallEnded, SyscallQueued, ToolEnded, ToolStarted
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage
from engine.llm.scripted import ScriptedBackend
from engine.metrics import INSTRUMENTS, Metrics, Prometheus


def test_a_model_call_queued_again_counts_its_turnaround_from_its_first_queueing(tmp_path: Path) -> None:
    """The kernel queues a call again when the model was unavailable: its turnaround runs from the first time."""
    sink = Prometheus()
    metrics = Metrics(Kernel(ScriptedBackend([]), Storage(f"sqlite:///{tmp_path / 'runs.db'}")), "scripted", sink)
    for at in (100.0, 105.0):
        metrics.observe(SyscallQueued("run", syscall="s1", kind="generate", at=at))
    metrics.observe(SyscallEnded("run", syscall="s1", kind="generate", waiting=1.0, running=2.0, tokens=7, at=110.0))
    metrics.observe(ToolStarted("run", tool="calculator", syscall="s2", at=110.0))
    metrics.observe(ToolEnded("run", tool="calculator", syscall="s2", error="division by zero", at=110.5))
    value = sink.registry.get_sample_value
    assert value("flowrun_model_call_turnaround_seconds_sum", {"backend": "scripted"}) == 10.0
    assert value("flowrun_model_call_waiting_seconds_sum", {"backend": "scripted"}) == 1.0
    assert value("flowrun_generated_tokens_total", {"backend": "scripted"}) == 7
    assert value("flowrun_tool_call_duration_seconds_sum", {"tool": "calculator"}) == 0.5
    assert value("flowrun_tool_call_errors_total", {"tool": "calculator"}) == 1


def test_the_readme_names_every_instrument_both_ways() -> None:
    """README's table of metrics is held to engine.metrics: each instrument's OpenTelemetry and Prometheus names."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in readme.splitlines()
            if line.startswith("| `flowrun.")}
    assert {name.split("{")[0].strip("`"): prometheus.strip("`") for name, prometheus in rows.items()} == {
        i.name: i.prometheus + ("_total" if i.kind == "counter" else "") for i in INSTRUMENTS}
