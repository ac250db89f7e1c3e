"""`flowrun runs trace`: a stored run as an OTLP/JSON trace, after OpenTelemetry's GenAI conventions. Run on
tests/flows/team_ledger.yaml (scripted): a map whose items call a tool, a parallel step with a sub-flow and a call
of another agent, and an agent step; the span tree, its links and attributes, and its token counts are checked
against storage."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.interpreter.runs import record
from engine.kernel.storage import Storage

HERE = Path(__file__).with_name("flows")


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
    assert all(parent(span).startswith("step ") for span in chats)
    assert all([e["name"] for e in span["events"]][:2] == ["flowrun.queued", "flowrun.started"] for span in chats)
    for span in spans:
        assert int(span["startTimeUnixNano"]) <= int(span["endTimeUnixNano"]) and span["status"] == {"code": 1}

    again = CliRunner().invoke(main, ["runs", "trace", run_id, "--db", db])
    assert json.loads(again.stdout) == trace  # ids are derived, not drawn: the same trace each time


def test_a_run_that_is_not_there_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    traced = CliRunner().invoke(main, ["runs", "trace", "nosuchrun", "--db", str(tmp_path / "runs.db")])
    assert traced.exit_code != 0 and "Traceback" not in traced.output and "nosuchrun" in traced.output
