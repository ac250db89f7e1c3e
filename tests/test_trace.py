"""`flowrun runs trace`: a stored run as an OTLP/JSON trace, after OpenTelemetry's GenAI conventions. Run on
tests/flows/team_ledger.yaml (scripted): a map whose items call a tool, a parallel step with a sub-flow and a call
of another agent, and an agent step; the span tree, its links and attributes, and its token counts are checked
against storage."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.interpreter.runs import record
from engine.kernel.storage import Storage
from engine.metrics import INSTRUMENTS
from engine.spans import MODEL_CALLS, traced, traceparent
from tests.conftest import ROOT

HERE = Path(__file__).with_name("flows")


def flowrun_env(**variables: str) -> dict[str, str]:
    """The environment of a flowrun process under test: this one's without its OTEL_* variables, and `variables`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | {"PYTHONPATH": str(ROOT), **variables}


def attributes(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}


def test_a_run_with_children_is_one_trace_of_agent_step_chat_and_tool_spans(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the runs' workspaces
    db = str(tmp_path / "runs.db")
    ran = CliRunner().invoke(main, ["run", str(HERE / "team_ledger.yaml"), "-i", "purchases=apples 3, bread 2 and "
                                    "milk 1.5", "--tools", str(HERE), "--backend", "scripted", "--cassette",
                                    str(HERE / "team_ledger.cassette.yaml"), "--db", db, "--json"])
    assert ran.exit_code == 0, ran.output
    run_id = json.loads(ran.stdout)["run_id"]
    traced = CliRunner().invoke(main, ["runs", "trace", run_id[:12], "--db", db, "-o", str(tmp_path / "t.json")])
    assert traced.exit_code == 0, traced.output
    trace = json.loads((tmp_path / "t.json").read_text())
    [scope] = trace["resourceSpans"][0]["scopeSpans"]
    spans = scope["spans"]
    by_id = {span["spanId"]: span for span in spans}
    assert len({span["traceId"] for span in spans}) == 1 and len(by_id) == len(spans)

    def parent(span: dict[str, Any]) -> str | None:
        return by_id[span["parentSpanId"]]["name"] if "parentSpanId" in span else None

    [root] = [span for span in spans if "parentSpanId" not in span]
    assert root["name"] == "invoke_agent TeamLedger" and attributes(root)["gen_ai.agent.id"] == run_id
    steps = [span["name"] for span in spans if span.get("parentSpanId") == root["spanId"] and
             span["name"].startswith("step ")]
    assert steps == ["step plan", "step record_all", "step checks", "step confirm", "step summary"]
    # the children: three map items (the flow's own agent), a parallel step's sub-flow and agent, an agent step
    children = Counter((span["name"], parent(span)) for span in spans if span is not root and
                       span["name"].startswith("invoke_agent"))
    assert children == {("invoke_agent TeamLedger", "step record_all"): 3,
                        ("invoke_agent TeamLedger", "step checks"): 1, ("invoke_agent Tally", "step checks"): 1,
                        ("invoke_agent Tally", "step confirm"): 1}
    tools = [span for span in spans if span["name"] == "execute_tool append_entry"]
    assert len(tools) == 3 and {parent(span) for span in tools} == {"step record"}
    assert {attributes(span)["gen_ai.tool.name"] for span in tools} == {"append_entry"}

    stored = record(Storage(f"sqlite:///{db}"), run_id)
    model_calls = [call for found in stored.tree() for call in found.syscalls
                   if call.kind in ("generate", "choose", "call_tool") and not call.superseded]
    chats = [span for span in spans if attributes(span).get("gen_ai.operation.name") == "chat"]
    assert len(chats) == len(model_calls)
    assert sum(int(attributes(span)["gen_ai.usage.output_tokens"]) for span in chats) == \
        sum(call.tokens for call in model_calls) > 0
    assert sum(int(attributes(span)["gen_ai.usage.input_tokens"]) for span in chats) == \
        sum(call.input_tokens for call in model_calls) > 0
    assert all(parent(span).startswith("step ") for span in chats)
    assert all([e["name"] for e in span["events"]][:2] == ["flowrun.queued", "flowrun.started"] for span in chats)
    for span in spans:
        assert int(span["startTimeUnixNano"]) <= int(span["endTimeUnixNano"]) and span["status"] == {}

    again = CliRunner().invoke(main, ["runs", "trace", run_id, "--db", db])
    assert json.loads(again.stdout) == trace  # ids are derived, not drawn: the same trace each time


def test_a_run_that_is_not_there_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    traced = CliRunner().invoke(main, ["runs", "trace", "nosuchrun", "--db", str(tmp_path / "runs.db")])
    assert traced.exit_code != 0 and "Traceback" not in traced.output and "nosuchrun" in traced.output


class Receiver(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint (POST /v1/traces and /v1/metrics, protobuf): keeps each request's body, by path."""

    bodies: ClassVar[dict[str, list[bytes]]] = {}

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        body = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
        Receiver.bodies.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def received() -> list[Any]:
    """The resource spans the receiver got, decoded with OpenTelemetry's own protobuf definitions."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    return [found for body in Receiver.bodies.get("/v1/traces", [])
            for found in ExportTraceServiceRequest.FromString(body).resource_spans]


def metrics_received() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Each metric the receiver got last: its points' values (a histogram's: its count), by their attributes."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    last: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for body in Receiver.bodies.get("/v1/metrics", []):
        for resource in ExportMetricsServiceRequest.FromString(body).resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    last[metric.name] = {
                        tuple(sorted((a.key, a.value.string_value) for a in point.attributes)):
                        point.count if kind == "histogram" else
                        point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
                        for point in getattr(metric, kind).data_points}
    return last


def test_with_an_otlp_endpoint_each_run_exports_its_spans_as_runs_trace_writes_them(tmp_path: Path) -> None:
    """The run with its map, parallel step and agents, exported over OTLP/HTTP to a receiver on loopback as each
    run ends: the same spans, links and token counts as `runs trace` reads from storage (input tokens and time to
    first token too); prompts and answers only with FLOWRUN_TRACE_CONTENT=1. Its metrics go to the same endpoint,
    at exit, and count what storage holds."""
    Receiver.bodies = {}
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    db = str(tmp_path / "runs.db")
    env = flowrun_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_port}",
                      OTEL_SERVICE_NAME="ledger-team", FLOWRUN_TRACE_CONTENT="1")
    try:
        done = subprocess.run([sys.executable, "-m", "engine", "run", str(HERE / "team_ledger.yaml"), "-i",
                               "purchases=apples 3, bread 2 and milk 1.5", "--tools", str(HERE), "--backend",
                               "scripted", "--cassette", str(HERE / "team_ledger.cassette.yaml"), "--db", db,
                               "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    finally:
        receiver.shutdown()
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    resources = received()
    exported = [span for found in resources for scope in found.scope_spans for span in scope.spans]
    traced = CliRunner().invoke(main, ["runs", "trace", run_id, "--db", db])
    written = json.loads(traced.stdout)["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert sorted((s.name, s.span_id.hex(), s.parent_span_id.hex()) for s in exported) == \
        sorted((s["name"], s["spanId"], s.get("parentSpanId", "")) for s in written)
    assert {s.trace_id.hex() for s in exported} == {written[0]["traceId"]}
    tokens = {s.span_id.hex(): [a.value.int_value for a in s.attributes if a.key == "gen_ai.usage.output_tokens"]
              for s in exported}
    assert tokens == {s["spanId"]: [int(attributes(s)["gen_ai.usage.output_tokens"])]
                      if "gen_ai.usage.output_tokens" in attributes(s) else [] for s in written}
    chats = [s for s in exported if s.name.startswith("chat")]
    assert chats and all(any(a.key == "gen_ai.output.messages" for a in s.attributes) for s in chats)
    assert {a.value.string_value for s in chats for a in s.attributes if a.key == "gen_ai.provider.name"} == \
        {"flowrun.scripted"}
    assert not any(key.startswith("gen_ai.output") for s in written for key in attributes(s))  # not asked for
    assert {a.value.string_value for found in resources for a in found.resource.attributes
            if a.key == "service.name"} == {"ledger-team"}

    stored = record(Storage(f"sqlite:///{db}"), run_id).tree()
    calls = {call.id: call for found in stored for call in found.syscalls if call.kind in MODEL_CALLS}
    for span in chats:
        said = {a.key: a.value for a in span.attributes}
        call = calls[said["flowrun.syscall.id"].string_value]
        assert said["gen_ai.usage.input_tokens"].int_value == call.input_tokens > 0
        assert said["gen_ai.response.time_to_first_chunk"].double_value == pytest.approx(call.first_token -
                                                                                          call.started)
    # the same run's metrics, through OpenTelemetry's: what storage holds of it, counted as it ran
    exported_metrics = metrics_received()
    assert len(Receiver.bodies["/v1/metrics"]) == 1  # sent once, at exit (the run is shorter than the interval)
    assert {i.name for i in INSTRUMENTS} - exported_metrics.keys() == {"flowrun.tool_call.errors"}  # none failed
    assert exported_metrics["flowrun.runs"] == {(("status", "finished"),): len(stored)}
    assert sum(exported_metrics["flowrun.steps"].values()) == sum(len(found.steps) for found in stored)
    assert exported_metrics["flowrun.generated_tokens"] == {(("backend", "scripted"),):
                                                            sum(call.tokens for call in calls.values())}
    assert exported_metrics["flowrun.input_tokens"] == {(("backend", "scripted"),):
                                                        sum(call.input_tokens for call in calls.values())}
    assert exported_metrics["flowrun.model_call.waiting"] == {(("backend", "scripted"),): len(calls)}
    assert exported_metrics["flowrun.tool_call.duration"] == {
        (("tool", tool),): n for tool, n in Counter(call.tool for found in stored for call in found.tools).items()}
    assert exported_metrics["flowrun.scheduler.slots"] == {(("backend", "scripted"),): 1}


def test_without_an_endpoint_the_sdk_is_not_even_imported(tmp_path: Path) -> None:
    env = flowrun_env()
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom engine.cli import main\n"
                           "try:\n    main(['run', sys.argv[1], '-i', 'purchases=tea 1', '--tools', sys.argv[2], "
                           "'--backend', 'scripted', '--cassette', sys.argv[3], '--db', 'runs.db'])\n"
                           "except SystemExit:\n    pass\nprint('opentelemetry.sdk' in sys.modules)",
                           str(HERE / "team_ledger.yaml"), str(HERE), str(HERE / "team_ledger.cassette.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr


ASKER = """\
flowrun: 1
name: Asker
description: Asks whether to go on, then says the answer.
steps:
  ask: {kind: input, prompt: Go on?, branches: {"yes": done, "no": done}}
  done: {kind: terminal, output: "{{ steps.ask.output }}"}
"""


def test_a_run_resumed_is_exported_once_when_it_ends_and_replays_and_tests_not_at_all(tmp_path: Path) -> None:
    """The run waits for a person in one process (not exported: it has not ended), is answered in another
    (exported, whole); replaying it and running its test cases, with the endpoint still set, send nothing."""
    Receiver.bodies = {}
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    (tmp_path / "asker.yaml").write_text(ASKER)
    (tmp_path / "asker.test.yaml").write_text("cases:\n  - name: yes\n    responses: []\n    answers: {ask: \"yes\"}"
                                              "\n    expect: {answer: {equals: \"yes\"}}\n")
    (tmp_path / "none.cassette.yaml").write_text("responses: []\n")
    env = flowrun_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_port}")

    def flowrun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env=env)

    try:
        waiting = flowrun("run", "asker.yaml", "--backend", "scripted", "--cassette", "none.cassette.yaml",
                          "--db", "runs.db", "--json")
        assert waiting.returncode == 4, waiting.stderr
        assert "/v1/traces" not in Receiver.bodies
        run_id = json.loads(waiting.stdout)["run_id"]
        answered = flowrun("runs", "answer", run_id, "--text", "yes", "--backend", "scripted", "--cassette",
                           "none.cassette.yaml", "--db", "runs.db")
        assert answered.returncode == 0, answered.stderr
        sent = len(Receiver.bodies["/v1/traces"])
        assert flowrun("runs", "replay", run_id, "--db", "runs.db").returncode == 0
        assert flowrun("test", "asker.test.yaml").returncode == 0
    finally:
        receiver.shutdown()
    names = Counter(span.name for found in received() for scope in found.scope_spans for span in scope.spans)
    assert names == {"invoke_agent Asker": 1, "step ask": 1, "step done": 1}
    assert len(Receiver.bodies["/v1/traces"]) == sent


def test_a_traceparent_is_kept_as_w3c_says() -> None:
    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert traceparent(f" 00-{trace}-{span}-01 ") == f"00-{trace}-{span}-01"
    assert traceparent(f"01-{trace}-{span}-00-what-comes-later") == f"00-{trace}-{span}-00"  # a later version
    for bad in (f"00-{trace.upper()}-{span}-01", f"ff-{trace}-{span}-01", f"00-{'0' * 32}-{span}-01",
                f"00-{trace}-{'0' * 16}-01", f"00-{trace}-{span}-01-extra", "garbage", None):
        assert traceparent(bad) is None, bad
    assert traced(None) and traced(f"00-{trace}-{span}-01") and not traced(f"00-{trace}-{span}-00")


@pytest.mark.parametrize(("variables", "named"), [
    ({"OTEL_METRIC_EXPORT_INTERVAL": "0"}, "OTEL_METRIC_EXPORT_INTERVAL is '0'"),
    ({"OTEL_BSP_MAX_QUEUE_SIZE": "lots"}, "OTEL_BSP_MAX_QUEUE_SIZE is 'lots'"),
    ({"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL is 'http/json'")])
def test_an_otel_variable_flowrun_cannot_use_is_named_in_a_message_not_a_traceback(
        tmp_path: Path, variables: dict[str, str], named: str) -> None:
    env = flowrun_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", **variables)
    done = subprocess.run([sys.executable, "-m", "engine", "run", str(HERE / "team_ledger.yaml"), "-i",
                           "purchases=tea 1", "--tools", str(HERE), "--backend", "scripted", "--cassette",
                           str(HERE / "team_ledger.cassette.yaml"), "--db", "runs.db"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and named in done.stderr and "Traceback" not in done.stderr, done.stderr
