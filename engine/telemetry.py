"""Exporting runs' spans and the kernel's metrics over OTLP, configured by OpenTelemetry's standard variables:
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, _METRICS_ENDPOINT), OTEL_EXPORTER_OTLP_PROTOCOL
(http/protobuf, the default, or grpc; or _TRACES_PROTOCOL, _METRICS_PROTOCOL), OTEL_EXPORTER_OTLP_HEADERS,
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_METRIC_EXPORT_INTERVAL; OTEL_SDK_DISABLED=true turns both off,
OTEL_TRACES_EXPORTER=none or OTEL_METRICS_EXPORTER=none one of them. With no endpoint nothing is imported or sent.

Spans: a listener on the kernel's event bus; when a run ends (a child run too), its records are read from storage
and its own spans (engine.spans) built from them on a thread of its own, for a batch processor, which sends them in
the background and the rest at exit.
A child's spans name the span of the step that started it as their parent, and share its root's trace: the
parent's are sent when the parent ends. FLOWRUN_TRACE_CONTENT=1 adds what model calls were asked and answered.
Metrics: engine.metrics' instruments, recorded into OpenTelemetry's, sent every export interval and at exit.
Needs the `otel` extra.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine import __version__
from engine.errors import FlowrunError, RunStatus
from engine.events import Event, RunEnded
from engine.interpreter.runs import RunRecord, record, root_of
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow
from engine.spans import SEMCONV, Span, parent_of, run_spans, trace_id, traced

_shared: dict[str, Any] = {}  # the process's one batch processor, thread building spans and meter, made when needed
SCHEMA = f"https://opentelemetry.io/schemas/{SEMCONV}"


class TelemetryError(FlowrunError):
    """Tracing is asked for (an OTEL_* endpoint) but cannot be done: the message says what to install or set."""


def configured(signal: str) -> bool:
    """Whether the environment asks for `signal` (traces, metrics) to be exported."""
    off = os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or \
        os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").lower() == "none"
    return not off and any(os.environ.get(name) for name in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                                             f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"))


PROVIDERS = {"ollama": "ollama", "embedded": "llama.cpp"}  # gen_ai.provider.name of each backend (engine.llm)


def install(kernel: Kernel, backend: str) -> None:
    """Export the spans of the kernel's runs (their model calls made on `backend`, a Backend's name) and its
    metrics, each when the environment asks for it (`configured`). TelemetryError when the SDK is missing."""
    if configured("traces"):
        kernel.events.listeners.append(listener(kernel.storage, backend))
    if configured("metrics"):
        from engine.metrics import Metrics

        Metrics(kernel, backend, _meter())


def listener(storage: Storage, backend: str) -> Callable[[Event], None]:
    """An event bus listener exporting each run's spans when it finishes or fails: its records read and its spans
    built on telemetry's thread, off the event loop (a long run's end is thousands of rows and spans), for the
    batch processor. A run that stops otherwise (waiting, paused, interrupted) is sent when it ends so, resumed:
    once, with its spans as they were in the end. TelemetryError when the SDK is missing."""
    processor, worker = _processor(), _worker()
    content = os.environ.get("FLOWRUN_TRACE_CONTENT", "") == "1"
    provider = PROVIDERS.get(backend, f"flowrun.{backend}")

    def export(run_id: str) -> None:
        try:  # the read waits for the writes queued before it: the run's last records among them
            found = record(storage, run_id, children=False)
            root = root_of(storage, found.run)
            if traced(root.traceparent):
                for span in _spans_of(found, root, content, provider):
                    processor.on_end(span)
        except Exception as exc:  # storage failing (the run's own end says so), or a bug: the run is stored
            print(f"flowrun: the spans of run {run_id} were not exported: {exc}", file=sys.stderr)

    def ended(event: Event) -> None:
        if isinstance(event, RunEnded) and event.status in (RunStatus.FINISHED, RunStatus.FAILED):
            worker.submit(export, event.run)

    return ended


def _spans_of(found: RunRecord, root: RunRow, content: bool, provider: str) -> list[Any]:
    """The SDK's spans of the run `found` (its own), in the trace of `root`, the run a user started; its model
    calls' made by `provider`."""
    from opentelemetry.sdk.trace import Event as SpanEvent
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    trace = int(trace_id(root), 16)
    scope = InstrumentationScope("flowrun", __version__, SCHEMA)
    resource = _resource()

    def context(span_id: str) -> SpanContext:
        return SpanContext(trace, int(span_id, 16), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))

    def readable(span: Span) -> ReadableSpan:
        return ReadableSpan(
            span.name, context(span.id), context(span.parent) if span.parent else None, resource, span.attributes,
            [SpanEvent(name, timestamp=round(at * 1e9)) for name, at in span.events],
            kind=SpanKind.CLIENT if span.kind == "CLIENT" else SpanKind.INTERNAL,
            status=Status(StatusCode.ERROR, span.error) if span.error else Status(StatusCode.UNSET),
            start_time=round(span.start * 1e9), end_time=round(span.end * 1e9), instrumentation_scope=scope)

    made = run_spans(found, parent_of(found.run), content=content)
    for span in made:
        if span.attributes.get("gen_ai.operation.name") == "chat":  # storage does not keep which backend ran
            span.attributes["gen_ai.provider.name"] = provider
    return [readable(span) for span in made]


def _worker() -> ThreadPoolExecutor:
    """The thread building spans: one, so that runs' spans go in the order they ended."""
    if "worker" not in _shared:
        _shared["worker"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowrun-telemetry")
    return _shared["worker"]


def _processor() -> Any:
    """The process's batch span processor, sending to the exporter the environment names (the rest at `close`)."""
    if "processor" not in _shared:
        exporter = _exporter("traces")  # first: it says what to install when the SDK is missing
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # a run of 5,000 steps ends with 10,000 spans at once: the SDK's default queue (2,048) would drop most
        queue = _setting("OTEL_BSP_MAX_QUEUE_SIZE", "65536", int)
        _shared["processor"] = BatchSpanProcessor(exporter, max_queue_size=queue)
        atexit.register(close)
    return _shared["processor"]


def _meter() -> Any:
    """The process's sink of metrics (engine.metrics.OpenTelemetry), exported every OTEL_METRIC_EXPORT_INTERVAL (60
    s by default) and at `close`."""
    if "meter" not in _shared:
        exporter = _exporter("metrics")
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        from engine.metrics import OpenTelemetry

        interval = _setting("OTEL_METRIC_EXPORT_INTERVAL", "60000", float)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval)
        provider = _shared["provider"] = MeterProvider([reader], _resource())
        atexit.register(close)
        _shared["meter"] = OpenTelemetry(provider.get_meter("flowrun", __version__, SCHEMA))
    return _shared["meter"]


def _setting(name: str, default: str, kind: Callable[[str], Any]) -> Any:
    """The positive number the variable `name` holds (`default` where it is unset)."""
    given = os.environ.get(name) or default
    try:
        value = kind(given)
    except ValueError:
        value = 0
    if not value > 0:
        raise TelemetryError(f"{name} is {given!r}: give a number above 0, or unset it")
    return value


def _exporter(signal: str) -> Any:
    """The OTLP exporter of `signal` (traces, metrics) over the protocol the environment names."""
    variable = next((name for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
                     if os.environ.get(name)), None)
    protocol = os.environ[variable].strip().lower() if variable else "http/protobuf"
    if protocol not in ("grpc", "http/protobuf"):
        raise TelemetryError(f"{variable} is {protocol!r}: flowrun exports http/protobuf or grpc")
    name = f"opentelemetry.exporter.otlp.proto.{protocol.split('/')[0]}.{signal.rstrip('s')}_exporter"
    try:
        found = importlib.import_module(name)
    except ImportError as exc:
        endpoints = " and ".join(name for name in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                                   f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
                                 if os.environ.get(name))
        raise TelemetryError(f"{endpoints} asks for {signal} to be exported, but OpenTelemetry's SDK and its "
                             f"{protocol} exporter are not installed ({exc.name}): pip install 'flowrun[otel]', or "
                             f"unset {endpoints}") from None
    return found.OTLPMetricExporter() if signal == "metrics" else found.OTLPSpanExporter()


def _resource() -> Any:
    """What exports say they come from: OTEL_SERVICE_NAME (else flowrun) and OTEL_RESOURCE_ATTRIBUTES."""
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "flowrun"}))
    return resource


def flush() -> None:
    """Send the spans of every run ended so far, and the metrics as they are, now."""
    if "worker" in _shared:
        _shared["worker"].submit(lambda: None).result()  # after what was queued before it: one thread
    if "processor" in _shared:
        _shared["processor"].force_flush()
    if "provider" in _shared:
        _shared["provider"].force_flush()


def close() -> None:
    """Send what is left (the spans of every run ended so far, the metrics as they are) and stop exporting: both
    signals at once, so that a collector that does not answer holds this for one OTEL_EXPORTER_OTLP_TIMEOUT."""
    if "worker" in _shared:
        _shared.pop("worker").shutdown()  # after what was queued before it: one thread
    ends = [_shared.pop(name).shutdown for name in ("processor", "provider") if name in _shared]
    _shared.pop("meter", None)
    closing = []
    for end in ends:
        thread = threading.Thread(target=end, name="flowrun-telemetry-close")
        try:
            thread.start()
        except RuntimeError:  # at exit, once the interpreter shuts down, no thread starts: this one waits
            end()
        else:
            closing.append(thread)
    for thread in closing:
        thread.join()
