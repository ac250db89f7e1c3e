"""A kernel's metrics: one set of instruments (INSTRUMENTS), measured once and recorded into a sink, either
Prometheus's text format (prometheus-client; `GET /metrics` on `flowrun serve`) or OpenTelemetry's metrics (exported
over OTLP by engine.telemetry).

Counters and histograms are fed by the kernel's event bus (runs ended by status, steps ended by kind, model calls'
queue wait, turnaround and time to first token, their prompt and generated tokens, tool calls' durations and errors)
and by its storage (how long an awaited commit takes); gauges are read from its scheduler when collected (calls
queued, slots in use, slots). An instrument's Prometheus name is its OpenTelemetry name with dots as underscores and
`_seconds` for a unit of seconds (what OpenTelemetry's own Prometheus exporter writes), counters with `_total`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.events import Event, RunEnded, StepEnded, SyscallEnded, SyscallQueued, ToolEnded, ToolStarted
from engine.kernel.kernel import Kernel
from engine.kernel.syscall import SyscallKind

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MODEL_CALLS = frozenset({SyscallKind.GENERATE, SyscallKind.CHOOSE, SyscallKind.CALL_TOOL})
SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass(frozen=True)
class Instrument:
    """What one measures: `kind` counter, histogram or gauge, `unit` in UCUM (`s`, `{token}`)."""

    name: str
    kind: str
    unit: str
    description: str
    labels: tuple[str, ...] = ()

    @property
    def prometheus(self) -> str:
        return self.name.replace(".", "_") + ("_seconds" if self.unit == "s" else "")


RUNS = Instrument("flowrun.runs", "counter", "{run}", "Runs that stopped, by status (one waiting, paused or "
                  "interrupted stops again when resumed).", ("status",))
STEPS = Instrument("flowrun.steps", "counter", "{step}", "Steps ended, by kind.", ("kind",))
GENERATED = Instrument("flowrun.generated_tokens", "counter", "{token}", "Tokens the model generated.", ("backend",))
PROMPTED = Instrument("flowrun.input_tokens", "counter", "{token}", "Tokens of the prompts of model calls, where "
                      "the backend counted them.", ("backend",))
WAITING = Instrument("flowrun.model_call.waiting", "histogram", "s", "Seconds a model call waited for a slot.",
                     ("backend",))
TURNAROUND = Instrument("flowrun.model_call.turnaround", "histogram", "s", "Seconds from a model call's queueing "
                        "to its end.", ("backend",))
FIRST_TOKEN = Instrument("flowrun.model_call.time_to_first_token", "histogram", "s", "Seconds from a model call "
                         "getting a slot to its first token.", ("backend",))
TOOL_SECONDS = Instrument("flowrun.tool_call.duration", "histogram", "s", "Seconds a tool call took.", ("tool",))
TOOL_ERRORS = Instrument("flowrun.tool_call.errors", "counter", "{call}", "Tool calls that failed.", ("tool",))
COMMITS = Instrument("flowrun.storage.commit.duration", "histogram", "s", "Seconds an awaited storage commit took "
                     "(a step, a run's start or end).")
QUEUED = Instrument("flowrun.scheduler.queued", "gauge", "{call}", "Model calls waiting for a slot (new or "
                    "preempted).", ("backend",))
IN_USE = Instrument("flowrun.scheduler.slots_in_use", "gauge", "{slot}", "Generations holding a slot.", ("backend",))
SLOTS = Instrument("flowrun.scheduler.slots", "gauge", "{slot}", "Generations the model runs at once.", ("backend",))
INSTRUMENTS = (RUNS, STEPS, GENERATED, PROMPTED, WAITING, TURNAROUND, FIRST_TOKEN, TOOL_SECONDS, TOOL_ERRORS, COMMITS,
               QUEUED, IN_USE, SLOTS)

# a gauge's values when collected: (labels, value) pairs
Reading = Callable[[], list[tuple[dict[str, str], float]]]


class Sink(Protocol):
    """Where measurements go."""

    def add(self, instrument: Instrument, value: float, labels: dict[str, str]) -> None:
        """Add `value` to a counter, or record it in a histogram."""
        ...

    def read(self, instrument: Instrument, reading: Reading) -> None:
        """Read a gauge's values with `reading` whenever it is collected."""
        ...


class Metrics:
    """The metrics of `kernel`, whose backend is called `backend` in their labels, recorded into `sink`."""

    def __init__(self, kernel: Kernel, backend: str, sink: Sink) -> None:
        self.sink, self.backend = sink, backend
        self._queued: dict[str, float] = {}  # a model call's syscall id: when it was queued
        self._tools: dict[str, float] = {}  # a tool call's syscall id: when it started
        scheduler = kernel.scheduler
        for gauge, read in ((QUEUED, lambda: scheduler.waiting), (IN_USE, lambda: scheduler.running),
                            (SLOTS, lambda: scheduler.backend.slots)):
            sink.read(gauge, lambda read=read: [({"backend": backend}, read())])
        kernel.events.listeners.append(self.observe)
        kernel.storage.timed.append(lambda seconds: sink.add(COMMITS, seconds, {}))

    def observe(self, event: Event) -> None:
        """Count what `event` tells (a listener of the event bus)."""
        add, backend = self.sink.add, {"backend": self.backend}
        if isinstance(event, RunEnded):
            add(RUNS, 1, {"status": event.status})
        elif isinstance(event, StepEnded):
            add(STEPS, 1, {"kind": event.kind})
        elif isinstance(event, SyscallQueued) and event.kind in MODEL_CALLS:
            self._queued.setdefault(event.syscall, event.at)  # queued again after the model was unavailable
        elif isinstance(event, SyscallEnded) and event.kind in MODEL_CALLS:
            add(GENERATED, event.tokens, backend)
            if event.input_tokens is not None:
                add(PROMPTED, event.input_tokens, backend)
            if event.waiting is not None:
                add(WAITING, event.waiting, backend)
            if event.first_token is not None:
                add(FIRST_TOKEN, event.first_token, backend)
            queued = self._queued.pop(event.syscall, None)
            if queued is not None:
                add(TURNAROUND, event.at - queued, backend)
        elif isinstance(event, ToolStarted):
            self._tools[event.syscall] = event.at
        elif isinstance(event, ToolEnded):
            started = self._tools.pop(event.syscall, event.at)
            add(TOOL_SECONDS, event.at - started, {"tool": event.tool})
            if event.error is not None:
                add(TOOL_ERRORS, 1, {"tool": event.tool})


class Prometheus:
    """A sink answering in Prometheus's text format (`text`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._made: dict[Instrument, Any] = {}
        for instrument in INSTRUMENTS:
            if instrument.kind == "counter":
                self._made[instrument] = Counter(instrument.prometheus, instrument.description, instrument.labels,
                                                 registry=self.registry)
            elif instrument.kind == "histogram":
                self._made[instrument] = Histogram(instrument.prometheus, instrument.description, instrument.labels,
                                                   buckets=SECONDS, registry=self.registry)

    def add(self, instrument: Instrument, value: float, labels: dict[str, str]) -> None:
        made = self._made[instrument].labels(**labels) if labels else self._made[instrument]
        made.inc(value) if instrument.kind == "counter" else made.observe(value)

    def read(self, instrument: Instrument, reading: Reading) -> None:
        self.registry.register(_Gauge(instrument, reading))

    def text(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)


class _Gauge(Collector):
    def __init__(self, instrument: Instrument, reading: Reading) -> None:
        self.instrument, self.reading = instrument, reading

    def collect(self) -> Iterator[Any]:
        gauge = GaugeMetricFamily(self.instrument.prometheus, self.instrument.description,
                                  labels=list(self.instrument.labels))
        for labels, value in self.reading():
            gauge.add_metric([labels[name] for name in self.instrument.labels], value)
        yield gauge


class OpenTelemetry:
    """A sink recording into OpenTelemetry instruments of `meter` (an SDK Meter); one per process, whatever
    kernels it has (a meter keeps the first instrument of a name)."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter
        self._made: dict[Instrument, Any] = {}
        self._readings: dict[Instrument, list[Reading]] = {}
        for instrument in INSTRUMENTS:
            if instrument.kind == "counter":
                self._made[instrument] = meter.create_counter(instrument.name, instrument.unit,
                                                              instrument.description)
            elif instrument.kind == "histogram":
                self._made[instrument] = meter.create_histogram(
                    instrument.name, instrument.unit, instrument.description,
                    explicit_bucket_boundaries_advisory=list(SECONDS))

    def add(self, instrument: Instrument, value: float, labels: dict[str, str]) -> None:
        made = self._made[instrument]
        made.add(value, labels) if instrument.kind == "counter" else made.record(value, labels)

    def read(self, instrument: Instrument, reading: Reading) -> None:
        from opentelemetry.metrics import Observation

        if instrument not in self._readings:
            readings = self._readings[instrument] = []

            def observe(_: Any) -> list[Any]:
                return [Observation(value, labels) for read in readings for labels, value in read()]

            self.meter.create_observable_gauge(instrument.name, [observe], instrument.unit, instrument.description)
        self._readings[instrument].append(reading)
