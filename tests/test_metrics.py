"""engine.metrics on events as the kernel publishes them (tests/test_serve.py scrapes a real server)."""

from __future__ import annotations

from pathlib import Path

from engine.events import SyscallEnded, SyscallQueued, ToolEnded, ToolStarted
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage
from engine.llm.scripted import ScriptedBackend
from engine.metrics import Metrics, Prometheus


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
