"""`flowrun serve`: the HTTP API against the ASGI app, and one real server process on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from engine.cli import main as main_cli
from engine.flow.manifest import load_tools
from engine.interpreter.setup import kernel_for
from engine.kernel.storage import Storage
from engine.kernel.tables import ToolCallRow
from engine.llm.scripted import ScriptedBackend
from engine.server.app import create_app
from engine.server.catalog import CatalogError, load_catalog
from engine.service import Service
from tests.conftest import ADDER

CALL = json.dumps({"tool": "calculator", "arguments": {"expression": "2 + 3"}})


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "adder.yaml").write_text(ADDER)
    return folder


def client_for(flows: Path, tmp_path: Path, responses: list[dict], token: str | None = None,
               max_runs: int | None = None, max_queued: int = 100, **options):
    offered = load_catalog([flows])
    backend = ScriptedBackend.from_responses(responses, **options)
    kernel = kernel_for([f.checked for f in offered.values()], backend, Storage(f"sqlite:///{tmp_path / 'r.db'}"))
    app = create_app(Service(kernel, max_runs=max_runs), offered, load_tools([]).tools, token=token,
                     max_queued=max_queued)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://flowrun")


def events(text: str) -> list[dict]:
    """The events of a Server-Sent Events body: id, event and data of each."""
    found = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        found.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return found


def test_a_run_started_over_http_streams_its_events_and_shows_its_answer(flows: Path, tmp_path: Path) -> None:
    async def main() -> None:
        async with client_for(flows, tmp_path, [{"key": "add", "text": CALL}, {"key": "say", "text": "five"}],
                              token_delay=0.01) as client:
            listed = (await client.get("/flows")).json()
            assert [(f["name"], sorted(f["inputs"])) for f in listed] == [("Adder", ["a", "b"])]
            shown = (await client.get("/flows/Adder")).json()
            assert shown["tools"] == ["calculator"] and shown["mermaid"].startswith("flowchart TD")
            created = await client.post("/runs", json={"flow": "Adder", "inputs": {"a": 2, "b": 3}})
            assert created.status_code == 201, created.text
            run_id = created.json()["id"]
            assert created.headers["location"] == f"/runs/{run_id}"
            streamed = await client.get(f"/runs/{run_id}/events")
            assert streamed.headers["content-type"].startswith("text/event-stream")
            got = events(streamed.text)
            assert [e["id"] for e in got] == list(range(1, len(got) + 1))
            assert got[0]["event"] == "run.started" and got[-1]["event"] == "run.ended"
            assert got[-1]["data"]["status"] == "finished"
            run = (await client.get(f"/runs/{run_id}")).json()
            assert (run["status"], run["answer"]) == ("finished", 5)
            assert [s["step"] for s in run["steps"]] == ["add", "say", "done"]
            assert [r["id"] for r in (await client.get("/runs")).json()] == [run_id]
            assert [r["id"] for r in (await client.get("/runs", params={"flow": "Adder"})).json()] == [run_id]
            assert (await client.get("/runs", params={"flow": "Nobody"})).json() == []
            # ended: its step.ended and run.ended events are rebuilt from storage, with the numbers they had
            kept = [e for e in got if e["event"] in ("step.ended", "run.ended")]
            rebuilt = events((await client.get(f"/runs/{run_id}/events")).text)
            assert [(e["id"], e["event"]) for e in rebuilt] == [(e["id"], e["event"]) for e in kept]
            for live, again in zip(kept, rebuilt, strict=True):  # the same, but for when (a step's end, stored)
                assert {**live["data"], "at": 0} == {**again["data"], "at": 0}
            after = kept[1]["id"]
            rest = events((await client.get(f"/runs/{run_id[:6]}/events", headers={"Last-Event-ID": str(after)})).text)
            assert [e["id"] for e in rest] == [e["id"] for e in kept[2:]]
            assert (await client.get("/runs/feedbeef/events")).status_code == 404

    asyncio.run(main())


def test_a_reconnecting_client_gets_each_event_once(flows: Path, tmp_path: Path) -> None:
    long = " ".join(f"w{i}" for i in range(40))

    async def main() -> tuple[list[dict], list[dict]]:
        async with client_for(flows, tmp_path, [{"key": "add", "text": CALL}, {"key": "say", "text": long}],
                              token_delay=0.01) as client:
            run_id = (await client.post("/runs", json={"flow": "Adder", "inputs": {"a": 2, "b": 3}})).json()["id"]
            full = asyncio.create_task(client.get(f"/runs/{run_id[:8]}/events"))  # a start of the id will do
            later = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "3"})
            return events((await full).text), events(later.text)

    full, later = asyncio.run(main())
    assert [e["id"] for e in later] == [e["id"] for e in full][3:]


async def chunked() -> AsyncIterator[bytes]:  # a body sent without a Content-Length
    yield b'{"flow": "Adder"}'


def test_client_errors_are_problem_details(flows: Path, tmp_path: Path) -> None:
    async def main() -> None:
        async with client_for(flows, tmp_path, []) as client:
            cases = [
                (await client.post("/runs", json={"flow": "Nobody"}), 404, "no flow 'Nobody'"),
                (await client.post("/runs", json={"flow": "Adder", "inputs": {"a": 2}}), 422,
                 """input 'b' is required: give it with "inputs": {"b": ...}"""),
                (await client.post("/runs", json={"flow": "Adder", "inputs": {"a": "two", "b": 3}}), 422, "'a'"),
                (await client.post("/runs", content=b"{not json", headers={"content-type": "application/json"}),
                 422, "JSON"),
                (await client.post("/runs", json={"flow": "Adder", "priority": "high"}), 422, "priority"),
                (await client.post("/runs", content=b"x" * (2 << 20)), 413, "at most"),
                (await client.post("/runs", json={"flow": "Adder", "priority": 2**63}), 422, "priority"),
                (await client.get("/runs", params={"limit": 2**63}), 422, "limit"),
                (await client.get("/runs", params={"limit": -1}), 422, "limit"),
                (await client.get("/runs/feedbeef"), 404, "no run"),
                (await client.post("/runs/feedbeef/cancel"), 404, "no run"),
                (await client.post("/runs", content=chunked()), 411, "Content-Length"),
                (await client.get("/nowhere"), 404, "Not Found"),
                (await client.get("/runs/NOT-AN-ID"), 422, "pattern"),
                (await client.get("/runs", params={"batch": ""}), 422, "batch"),
                (await client.delete("/runs"), 405, "Method Not Allowed"),
                (await client.get("/flows/validate"), 404, "no flow 'validate'"),
            ]
            for response, status, said in cases:
                assert response.status_code == status, response.text
                assert response.headers["content-type"] == "application/problem+json"
                body = response.json()
                assert body["status"] == status and said in body["detail"], body
            # Allow names every method of the path (RFC 9110), its most literal one where two paths match
            assert (await client.delete("/runs")).headers["allow"] == "GET, POST"
            assert (await client.put("/flows/validate")).headers["allow"] == "POST"
            assert (await client.head("/healthz")).status_code == 200
            documented = (await client.get("/openapi.json")).json()["paths"]["/runs/{run_id}/cancel"]["post"]
            assert {"404", "409", "422"} <= set(documented["responses"])
            assert "application/problem+json" in documented["responses"]["409"]["content"]

    asyncio.run(main())


def test_a_flow_file_is_validated_over_http(flows: Path, tmp_path: Path) -> None:
    broken = ADDER.replace("next: say", "next: nowhere")

    async def main() -> tuple[dict, dict]:
        async with client_for(flows, tmp_path, []) as client:
            good = await client.post("/flows/validate", content=ADDER.encode())
            bad = await client.post("/flows/validate?file=mine.yaml", content=broken.encode())
            return good.json(), bad.json()

    good, bad = asyncio.run(main())
    assert good["diagnostics"] == [] and good["errors"] == 0
    (problem,) = [d for d in bad["diagnostics"] if d["severity"] == "error"]
    line = broken.splitlines().index("    next: nowhere") + 1
    assert (problem["file"], problem["line"], problem["code"]) == ("mine.yaml", line, "FR101")


def test_a_flow_sent_for_validation_cannot_make_the_server_read_files_it_names(flows: Path, tmp_path: Path) -> None:
    """Whether a file of the server's exists, or is a flow, is not the client's to learn through what it calls."""
    (tmp_path / "secret.yaml").write_text("flowrun: 1\nname: Secret\nsteps:\n  only: {kind: process}\n")
    caller = ("flowrun: 1\nname: Prober\nagents: [{ref}]\nsteps:\n  call: {{kind: agent, flow: {ref}, next: done}}\n"
              "  done: {{kind: terminal, output: x}}\n")

    async def main() -> list[list[str]]:
        async with client_for(flows, tmp_path, []) as client:
            found = []
            for ref in (f"../{tmp_path.name}/secret.yaml", "../no/such.yaml"):
                reply = await client.post(f"/flows/validate?file={tmp_path}/x.yaml", content=caller.format(ref=ref))
                found.append([d["code"] for d in reply.json()["diagnostics"]])
            return found

    assert asyncio.run(main()) == [[], []]  # read, the first is FR129 and the second FR120


def test_a_cancelled_run_is_resumed_over_http_without_repeating_a_step(flows: Path, tmp_path: Path) -> None:
    long = " ".join(f"w{i}" for i in range(300))

    async def main() -> tuple[dict, dict, list]:
        async with client_for(flows, tmp_path, [{"key": "add", "text": CALL}, {"key": "say", "text": long},
                                                {"key": "say", "text": "five"}], token_delay=0.005) as client:
            run_id = (await client.post("/runs", json={"flow": "Adder", "inputs": {"a": 2, "b": 3}})).json()["id"]
            await asyncio.sleep(0.3)  # it is saying its long answer
            cancelled = (await client.post(f"/runs/{run_id[:8]}/cancel")).json()
            listed = (await client.get("/runs", params={"status": "interrupted"})).json()
            resumed, again = await asyncio.gather(client.post(f"/runs/{run_id}/resume"),
                                                  client.post(f"/runs/{run_id}/resume"))
            assert sorted([resumed.status_code, again.status_code]) == [200, 409], (resumed.text, again.text)
            # not a number: from the start, which of the first attempt storage keeps (add's step.ended); the
            # resumed run's events are numbered on from the first attempt's
            odd = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": b"\xb2"})  # to its end
            got = events(odd.text)
            assert odd.status_code == 200 and (got[0]["event"], got[0]["data"]["step"]) == ("step.ended", "add")
            assert [e["id"] for e in got] == sorted({e["id"] for e in got}) and got[1]["event"] == "run.started"
            assert got[1]["id"] > got[0]["id"] + 1 and got[-1]["event"] == "run.ended"
            return cancelled, (await client.get(f"/runs/{run_id}")).json(), listed

    cancelled, run, listed = asyncio.run(main())
    assert cancelled["status"] == "interrupted" and [r["id"] for r in listed] == [run["id"]]
    assert (run["status"], run["answer"]) == ("finished", 5)
    assert [s["step"] for s in run["steps"]] == ["add", "say", "done"]  # add was not run again


def test_past_max_runs_a_run_waits_its_turn_and_past_the_queue_is_refused(flows: Path, tmp_path: Path) -> None:
    long = " ".join(f"w{i}" for i in range(300))
    adding = {"flow": "Adder", "inputs": {"a": 2, "b": 3}}

    async def main() -> None:
        async with client_for(flows, tmp_path, [{"key": "add", "text": CALL, "times": 2},
                                                {"key": "say", "text": long}, {"key": "say", "text": "five"}],
                              max_runs=1, max_queued=1, token_delay=0.005) as client:
            first = (await client.post("/runs", json=adding)).json()["id"]
            second = asyncio.create_task(client.post("/runs", json=adding))  # waits for the first to end
            await asyncio.sleep(0.2)
            assert not second.done()
            refused = await client.post("/runs", json=adding)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.headers["content-type"] == "application/problem+json"
            await client.post(f"/runs/{first}/cancel")
            admitted = await second
            assert admitted.status_code == 201, admitted.text
            events((await client.get(f"/runs/{admitted.json()['id']}/events")).text)  # to its end
            assert (await client.get(f"/runs/{admitted.json()['id']}")).json()["answer"] == 5

    asyncio.run(main())


def test_a_token_guards_every_route_but_health(flows: Path, tmp_path: Path) -> None:
    async def main() -> None:
        async with client_for(flows, tmp_path, [], token="s3cret") as client:
            assert (await client.get("/healthz")).status_code == 200
            refused = await client.get("/flows")
            assert refused.status_code == 401 and refused.json()["title"] == "Unauthorized"
            assert (await client.get("/flows", headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await client.get("/flows", headers={"Authorization": "Bearer s3cret"})).status_code == 200
            # the scheme's name in any case (RFC 9110); never the token alone, another scheme, or a token's start
            assert (await client.get("/flows", headers={"Authorization": "bearer s3cret"})).status_code == 200
            for wrong in ("s3cret", "Basic s3cret", "Bearer s3c", "Bearer", ""):
                assert (await client.get("/flows", headers={"Authorization": wrong})).status_code == 401, wrong

    asyncio.run(main())


def test_a_catalog_refuses_invalid_flows_and_shared_names(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ADDER)
    (tmp_path / "b.yaml").write_text(ADDER)
    with pytest.raises(CatalogError, match="are both flow 'Adder'"):
        load_catalog([tmp_path])
    (tmp_path / "b.yaml").write_text("flowrun: 1\nname: Broken\nsteps: {}\n")
    with pytest.raises(CatalogError, match=r"b\.yaml:\d+:\d+"):
        load_catalog([tmp_path])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving(port: int, flows: Path, cassette: Path, db: Path, *extra: str) -> subprocess.Popen:
    """A `flowrun serve` process on loopback, once it answers."""
    server = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", str(port), "--flows", str(flows),
                               "--backend", "scripted", "--cassette", str(cassette), "--db", str(db), *extra],
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "FLOWRUN_TOKEN": ""})
    for _ in range(400):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.05)
    server.kill()
    raise AssertionError(f"the server did not start: {server.stderr.read()}")


def ended(base: str, run_id: str) -> dict:
    for _ in range(400):
        run = httpx.get(f"{base}/runs/{run_id}").json()
        if run["status"] != "running":
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")


def test_a_real_server_stopped_by_sigterm_resumes_its_runs_after_a_restart(flows: Path, tmp_path: Path) -> None:
    long = " ".join(f"w{i}" for i in range(400))  # 20 s: longer than the 5 s a stop waits for connections
    cassette = tmp_path / "answers.cassette.yaml"
    cassette.write_text(json.dumps({"token_delay": 0.05, "responses": [
        {"key": "add", "text": CALL, "times": 2}, {"key": "say", "text": "five"}, {"key": "say", "text": long}]}))
    port, db = free_port(), tmp_path / "served.db"
    base = f"http://127.0.0.1:{port}"
    server = serving(port, flows, cassette, db)
    try:
        first = httpx.post(f"{base}/runs", json={"flow": "Adder", "inputs": {"a": 2, "b": 3}}).json()["id"]
        assert ended(base, first)["answer"] == 5
        second = httpx.post(f"{base}/runs", json={"flow": "Adder", "inputs": {"a": 2, "b": 3}}).json()["id"]

        def follow() -> None:  # a client following its events, which must not hold the stop up
            with contextlib.suppress(httpx.HTTPError):  # the server closes the stream when it stops
                httpx.get(f"{base}/runs/{second}/events", timeout=60)

        threading.Thread(target=follow, daemon=True).start()
        time.sleep(0.5)  # it is saying its long answer
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, server.stderr.read()
    finally:
        server.kill()
    storage = Storage(str(db), reading=True)
    stored = {row.id: row.status for row in storage.find_runs(None)}
    assert stored == {first: "finished", second: "interrupted"}
    server = serving(port, flows, cassette, db, "--resume-interrupted")  # its cassette answers `say` with "five"
    try:
        run = ended(base, second)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert (run["status"], run["answer"]) == ("finished", 5)
    assert [s["step"] for s in run["steps"]] == ["add", "say", "done"]
    record = Storage(str(db), reading=True)
    calls = [c for c in record.rows(ToolCallRow) if c.run_id == second and not c.superseded]
    assert len(calls) == 1  # the calculator was not called again


def test_metrics_follow_a_batch_of_runs_on_a_real_server(flows: Path, tmp_path: Path) -> None:
    """GET /metrics, parsed with prometheus-client's own parser while 6 runs share the model's slot: calls queue
    and the slot fills, then both empty; at the end the runs, steps, tokens, tool calls and commits are counted."""
    from prometheus_client.parser import text_string_to_metric_families

    cassette = tmp_path / "answers.cassette.yaml"
    cassette.write_text(json.dumps({"token_delay": 0.02, "responses": [
        {"key": "add", "text": CALL, "times": 6}, {"key": "say", "text": " ".join(["five"] * 40), "times": 6}]}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def scraped() -> dict[str, float]:
        text = httpx.get(f"{base}/metrics").text
        return {sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    server = serving(port, flows, cassette, tmp_path / "served.db")
    try:
        ids = [httpx.post(f"{base}/runs", json={"flow": "Adder", "inputs": {"a": 2, "b": 3}}).json()["id"]
               for _ in range(6)]
        seen = []
        while any(httpx.get(f"{base}/runs/{run}").json()["status"] == "running" for run in ids):
            seen.append(scraped())
            time.sleep(0.05)
        last = scraped()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    scheduler = '{"backend": "scripted"}'
    queued = [s[f"flowrun_scheduler_queued{scheduler}"] for s in seen]
    in_use = [s[f"flowrun_scheduler_slots_in_use{scheduler}"] for s in seen]
    slots = last[f"flowrun_scheduler_slots{scheduler}"]
    assert max(queued) > 0 and last[f"flowrun_scheduler_queued{scheduler}"] == 0
    assert max(in_use) == slots == 1 and last[f"flowrun_scheduler_slots_in_use{scheduler}"] == 0
    assert last['flowrun_runs_total{"status": "finished"}'] == 6
    assert last['flowrun_steps_total{"kind": "process"}'] == 12
    assert last['flowrun_tool_call_duration_seconds_count{"tool": "calculator"}'] == 6
    assert last[f"flowrun_generated_tokens_total{scheduler}"] > 6 * 40
    assert last[f"flowrun_model_call_waiting_seconds_count{scheduler}"] == 12
    assert last[f"flowrun_model_call_time_to_first_token_seconds_count{scheduler}"] == 12
    assert last[f"flowrun_input_tokens_total{scheduler}"] > 12  # the scripted backend counts prompts' words
    assert last["flowrun_storage_commit_duration_seconds_count{}"] >= 6 * 4  # each run's start, steps and end


def test_a_traceparent_on_post_runs_puts_the_runs_spans_in_the_callers_trace(flows: Path, tmp_path: Path) -> None:
    """W3C Trace Context: a run started with a valid traceparent is a span of that trace, under the caller's span
    (stored with the run, so `runs trace` writes it so too); a malformed one is ignored."""
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    async def main() -> list[str]:
        async with client_for(flows, tmp_path, [{"key": "add", "text": CALL, "times": 2},
                                                {"key": "say", "text": "five", "times": 2}]) as client:
            ids = []
            for header in (f"00-{caller_trace}-{caller_span}-01", "00-not-a-trace-context-01"):
                created = await client.post("/runs", json={"flow": "Adder", "inputs": {"a": 2, "b": 3}},
                                            headers={"traceparent": header})
                ids.append(created.json()["id"])
                await client.get(f"/runs/{ids[-1]}/events")  # to its end
            return ids

    continued, fresh = asyncio.run(main())

    def root(run_id: str) -> dict:
        traced = CliRunner().invoke(main_cli, ["runs", "trace", run_id, "--db", str(tmp_path / "r.db")])
        [span] = [s for s in json.loads(traced.stdout)["resourceSpans"][0]["scopeSpans"][0]["spans"]
                  if s["name"] == "invoke_agent Adder"]
        return span

    assert (root(continued)["traceId"], root(continued)["parentSpanId"]) == (caller_trace, caller_span)
    assert root(fresh)["traceId"] != caller_trace and "parentSpanId" not in root(fresh)
