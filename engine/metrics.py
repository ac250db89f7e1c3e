"""A kernel's metrics in Prometheus's text format (prometheus-client), for `GET /metrics` on `flowrun serve`.

Counters and histograms are fed by the kernel's event bus (runs ended by status, steps ended by kind, model calls'
queue wait and turnaround, generated tokens, tool calls' durations and errors) and by its storage (how long an
awaited commit takes); gauges are read from its scheduler when scraped (calls queued, slots in use, slots).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.events import Event, RunEnded, StepEnded, SyscallEnded, SyscallQueued, ToolEnded, ToolStarted
from engine.kernel.kernel import Kernel
from engine.kernel.syscall import SyscallKind

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MODEL_CALLS = frozenset({SyscallKind.GENERATE, SyscallKind.CHOOSE, SyscallKind.CALL_TOOL})
SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """The metrics of `kernel`, whose backend is called `backend` in their labels."""

    def __init__(self, kernel: Kernel, backend: str) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter("flowrun_runs", "Runs that stopped, by status (one waiting, paused or interrupted stops "
                            "again when resumed).", ["status"], registry=self.registry)
        self.steps = Counter("flowrun_steps", "Steps ended, by kind.", ["kind"], registry=self.registry)
        self.tokens = Counter("flowrun_generated_tokens", "Tokens the model generated.", ["backend"],
                              registry=self.registry)
        self.waiting = Histogram("flowrun_model_call_waiting_seconds", "Seconds a model call waited for a slot.",
                                 ["backend"], buckets=SECONDS, registry=self.registry)
        self.turnaround = Histogram("flowrun_model_call_turnaround_seconds", "Seconds from a model call's queueing "
                                    "to its end.", ["backend"], buckets=SECONDS, registry=self.registry)
        self.tool_seconds = Histogram("flowrun_tool_call_seconds", "Seconds a tool call took.", ["tool"],
                                      buckets=SECONDS, registry=self.registry)
        self.tool_errors = Counter("flowrun_tool_call_errors", "Tool calls that failed.", ["tool"],
                                   registry=self.registry)
        self.commits = Histogram("flowrun_storage_commit_seconds", "Seconds an awaited storage commit took (a "
                                 "step, a run's start or end).", buckets=SECONDS, registry=self.registry)
        self.registry.register(_Scheduler(kernel, backend))
        self.backend = backend
        self._queued: dict[str, float] = {}  # a model call's syscall id: when it was queued
        self._tools: dict[str, float] = {}  # a tool call's syscall id: when it started
        kernel.events.listeners.append(self.observe)
        kernel.storage.timed.append(self.commits.observe)

    def observe(self, event: Event) -> None:
        """Count what `event` tells (a listener of the event bus)."""
        if isinstance(event, RunEnded):
            self.runs.labels(event.status).inc()
        elif isinstance(event, StepEnded):
            self.steps.labels(event.kind).inc()
        elif isinstance(event, SyscallQueued) and event.kind in MODEL_CALLS:
            self._queued.setdefault(event.syscall, event.at)  # queued again after the model was unavailable
        elif isinstance(event, SyscallEnded) and event.kind in MODEL_CALLS:
            self.tokens.labels(self.backend).inc(event.tokens)
            queued = self._queued.pop(event.syscall, None)
            if event.waiting is not None:
                self.waiting.labels(self.backend).observe(event.waiting)
            if queued is not None:
                self.turnaround.labels(self.backend).observe(event.at - queued)
        elif isinstance(event, ToolStarted):
            self._tools[event.syscall] = event.at
        elif isinstance(event, ToolEnded):
            started = self._tools.pop(event.syscall, event.at)
            self.tool_seconds.labels(event.tool).observe(event.at - started)
            if event.error is not None:
                self.tool_errors.labels(event.tool).inc()

    def text(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)


class _Scheduler(Collector):
    """The scheduler's state when scraped."""

    def __init__(self, kernel: Kernel, backend: str) -> None:
        self.kernel, self.backend = kernel, backend

    def collect(self) -> Iterator[Any]:
        scheduler = self.kernel.scheduler
        for name, what, value in (("flowrun_scheduler_queued", "Model calls waiting for a slot (new or preempted).",
                                   scheduler.waiting),
                                  ("flowrun_scheduler_slots_in_use", "Generations holding a slot.",
                                   scheduler.running),
                                  ("flowrun_scheduler_slots", "Generations the model runs at once.",
                                   scheduler.backend.slots)):
            gauge = GaugeMetricFamily(name, what, labels=["backend"])
            gauge.add_metric([self.backend], value)
            yield gauge
