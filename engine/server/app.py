"""The HTTP API of `flowrun serve` (FastAPI): routes over engine.service, and nothing else.

Client errors are RFC 9457 problem details (application/problem+json), never a 500. When a token is set, every
route but /healthz wants `Authorization: Bearer TOKEN`. A request body must say its length (Content-Length, not
chunked) and stay under the limit. A run's events stream as Server-Sent Events, each with its sequence number as
its id, so a client that reconnects with Last-Event-ID gets only what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import re
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.errors import FlowrunError, RunStatus
from engine.flow.manifest import ToolManifest
from engine.flow.render import render_graph
from engine.flow.report import render_report
from engine.flow.validate import Report, check_flow_text
from engine.interpreter.answering import AnswerError, UnfitAnswer
from engine.interpreter.inputs import InputError, resolve_inputs
from engine.interpreter.resume import ResumeError
from engine.kernel.storage import NoSuchRun
from engine.metrics import CONTENT_TYPE as METRICS_TYPE
from engine.metrics import Metrics, Prometheus
from engine.server.catalog import Offered
from engine.service import AlreadyInFlight, NotInFlight, Service
from engine.spans import traceparent as kept_traceparent

MAX_BODY = 1 << 20  # bytes of a request body
HEX = "^[0-9a-f]{1,64}$"  # a run's or batch's id, or the start of one (as `flowrun runs` takes it)
RUN_ID = Path(pattern=HEX, description="A run's id, or a start of it that only one run's id has.")
# The status of a response to flowrun's errors (others: 400).
_STATUS = ((NoSuchRun, 404), (NotInFlight, 409), (AlreadyInFlight, 409), (ResumeError, 409), (InputError, 422),
           (UnfitAnswer, 422), (AnswerError, 409))
_NUMBER = re.compile(r"[0-9]{1,18}")  # a header's number (str.isdigit takes other digits, which int() refuses)


class RunRequest(BaseModel):
    """What POST /runs takes."""

    flow: str = Field(description="The name of a flow the server offers (GET /flows).")
    inputs: dict[str, Any] = Field(default_factory=dict, description="The flow's inputs, by name.")
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1,
                          description="Higher goes first under the priority scheduler.")


class AnswerRequest(BaseModel):
    """What POST /runs/{id}/answer takes."""

    value: Any = Field(description="The answer: one of the input step's labels, or data matching its schema.")
    step: str | None = Field(default=None, description="The input step answered, where the run waits on several.")


class Problem(BaseModel):
    """An RFC 9457 problem details body: what every error response holds."""

    model_config = ConfigDict(extra="allow")  # a 422 adds `errors`, each with where (`at`) and a `message`
    type: str = "about:blank"
    title: str
    status: int
    detail: str


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of error responses with these status codes: problem details."""
    schema = Problem.model_json_schema()
    return {code: {"description": HTTPStatus(code).phrase, "content": {"application/problem+json": {"schema": schema}}}
            for code in codes}


# What any route may answer: a flowrun error of no more precise status, a missing or wrong token, a body sent
# without its length or over the limit, a parameter or body that is not what the route takes.
ANY_ROUTE = problems(400, 401, 411, 413, 422)


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem details response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def create_app(service: Service, flows: Mapping[str, Offered], tools: Mapping[str, ToolManifest], *,
               token: str | None = None, max_body: int = MAX_BODY, resume_interrupted: bool = False,
               max_queued: int = 100, sweep: float = 5.0, queue: bool = False) -> FastAPI:
    """The API over `service`, running the `flows` offered (flow files are checked against `tools`), guarded by
    `token` if given; with `resume_interrupted`, the stored runs of those flows that were interrupted go on at
    start. Past the service's max_runs runs in flight a POST /runs waits its turn, and past `max_queued` waiting
    ones it is answered 429. Every `sweep` seconds, the questions of waiting runs whose deadline passed time out,
    and their runs go on (even those that began waiting under another process). With `queue`, runs are queued
    for workers (engine.worker) instead of run here, and resumed or answered runs queued again; their events are
    followed in storage."""
    jobs: list[Any] = []  # with `queue`: the job queue's app, open while the server runs

    async def time_out() -> None:
        while True:
            try:
                settled = await service.time_out()
            except FlowrunError as exc:  # a database busy for long, say: the next look tries again
                print(f"flowrun serve: timeouts not applied this time: {exc}", file=sys.stderr)
                settled = []
            for asked in settled:
                try:
                    await resume(asked.root.id)
                except (FlowrunError, HTTPException) as exc:  # not offered here, say: resumed elsewhere
                    print(f"flowrun serve: run {asked.root.id} timed out, not resumed: {exc}", file=sys.stderr)
            await asyncio.sleep(sweep)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if queue:
                from engine.worker.queue import app_for, ready

                jobs.append(await stack.enter_async_context(app_for(service.kernel.storage).open_async()))
                await ready(jobs[0])
            async with serving():
                yield

    @asynccontextmanager
    async def serving() -> AsyncIterator[None]:
        sweeping = asyncio.create_task(time_out())
        if resume_interrupted and not queue:
            for run in await service.runs(limit=None, status=RunStatus.INTERRUPTED):
                if run.agent in flows:
                    try:
                        await resume(run.id)
                    except FlowrunError as exc:  # its flow changed, say: the others still go on
                        print(f"flowrun serve: run {run.id} not resumed: {exc}", file=sys.stderr)
        yield
        sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping
        await service.interrupt_all()  # shutting down (SIGTERM): they end interrupted, to be resumed

    app = FastAPI(title="flowrun", summary="Runs of declarative LLM agent flows on one shared kernel.",
                  lifespan=lifespan, responses=ANY_ROUTE)

    app.add_middleware(_Guard, token=token, max_body=max_body)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"at": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{e['at']}: {e['message']}" for e in errors)
        return problem(422, "Unprocessable Content", detail, errors=errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        answer = problem(exc.status_code, str(exc.detail), str(exc.detail))
        answer.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Allow: the methods of the path (RFC 9110), not only those of its first route
            answer.headers["Allow"] = ", ".join(_methods(app, request.url.path))
        return answer

    @app.exception_handler(FlowrunError)
    async def user_error(_: Request, exc: FlowrunError) -> JSONResponse:
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 400)
        return problem(status, type(exc).__name__, str(exc))

    def offered(name: str) -> Offered:
        if name not in flows:
            raise HTTPException(404, f"no flow {name!r} here; see GET /flows")
        return flows[name]

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "runs_in_flight": len(service.in_flight)}

    # what some load balancers' health checks send; a HEAD of every GET route would double the OpenAPI document
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)

    measured = Prometheus()
    Metrics(service.kernel, service.kernel.scheduler.backend.name, measured)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {METRICS_TYPE: {}}}})
    async def metrics() -> Response:
        """The kernel's metrics, in Prometheus's text format."""
        return Response(measured.text(), media_type=METRICS_TYPE)

    @app.get("/flows")
    async def list_flows() -> list[dict[str, Any]]:
        return [_flow_summary(name, f) for name, f in sorted(flows.items())]

    @app.get("/flows/{name}", responses=problems(404))
    async def show_flow(name: str) -> dict[str, Any]:
        found = offered(name)
        return {**_flow_summary(name, found), "tools": list(found.checked.flow.tools),
                "mermaid": render_graph(found.checked.compiled, "mermaid")}

    @app.post("/runs", status_code=201, response_model=None, responses=problems(404, 429))
    async def start_run(body: RunRequest, response: Response,
                        traceparent: str | None = Header(None, description="A W3C trace context: the run's spans go "
                                                         "on in that trace, under that span, if it is sampled (one "
                                                         "malformed is ignored, as W3C says).")
                        ) -> dict[str, Any] | JSONResponse:
        found = offered(body.flow)
        inputs = resolve_inputs(found.checked.flow, body.inputs, "inputs", how='"inputs": {{"{name}": ...}}')
        if queue:
            from engine.worker.queue import enqueue

            (run_id,) = await enqueue(service.kernel.storage, found.checked, [inputs], file=str(found.path),
                                      traceparent=kept_traceparent(traceparent), app=jobs[0])
            response.headers["Location"] = f"/runs/{run_id}"
            return {"id": run_id, "flow": body.flow, "events": f"/runs/{run_id}/events", "status": RunStatus.QUEUED}
        if not await service.admit(max_queued):
            busy = problem(429, "Too Many Requests", f"{service.max_runs} runs are in flight and {max_queued} more "
                                                     "wait: try again later")
            busy.headers["Retry-After"] = "1"
            return busy
        started = await service.start(found.checked, inputs, file=str(found.path), priority=body.priority,
                                      traceparent=kept_traceparent(traceparent))
        response.headers["Location"] = f"/runs/{started.id}"
        return {"id": started.id, "flow": body.flow, "events": f"/runs/{started.id}/events"}

    @app.post("/flows/validate")
    async def validate(request: Request, file: str = "flow.yaml") -> dict[str, Any]:
        """The diagnostics of the flow file in the body (YAML), as `flowrun validate --format json` gives them, but
        for the flows it calls: this server reads no file a sent text names."""
        text = (await request.body()).decode("utf-8", errors="replace")
        # a big flow takes a while; the files it would call are the server's, which a client may not probe
        checked = await asyncio.to_thread(functools.partial(check_flow_text, follow=False), text, file, tools)
        return json.loads(render_report(Report([file], checked.diagnostics), "json"))

    @app.get("/runs")
    async def list_runs(limit: int = Query(20, ge=1, le=10_000), batch: str | None = Query(None, pattern=HEX),
                        status: RunStatus | None = None,
                        flow: str | None = Query(None, description="The name of the flow the runs ran.")
                        ) -> list[dict[str, Any]]:
        """The latest runs, newest first (of one batch, with one status, of one flow, as asked)."""
        return [_run_summary(run) for run in await service.runs(limit, batch, status, flow)]

    @app.get("/runs/{run_id}", responses=problems(404))
    async def show_run(run_id: str = RUN_ID) -> dict[str, Any]:
        run, stored = await service.progress(run_id)
        steps = [{"step": s.step, "visit": s.visit, "kind": s.kind, "branch": s.branch, "output": s.output}
                 for s in stored]
        # what it waits on the answers of: its own question, or its child runs' (to answer by `step`: the key)
        questions = [{**asked.question.data(), "run": asked.run.id} for asked in await service.waiting(run.id)] \
            if run.status in (RunStatus.WAITING, RunStatus.PAUSED) else []
        return {**_run_summary(run), "steps": steps, "questions": questions}

    @app.post("/runs/{run_id}/cancel", responses=problems(404, 409))
    async def cancel_run(run_id: str = RUN_ID) -> dict[str, Any]:
        outcome = await service.cancel(run_id)
        return {"id": outcome.run_id, "status": outcome.status, "error": outcome.error}

    async def resume(run_id: str) -> dict[str, Any]:
        found = await service.stopped(run_id)
        offer = flows.get(found.run.agent)
        if offer is None:
            raise HTTPException(409, f"run {run_id} ran flow {found.run.agent!r}, which this server does not offer")
        if queue:  # a worker goes on with it
            from engine.worker.queue import queue_again

            await queue_again(service.kernel.storage, found.run.id, jobs[0])
            return {"id": found.run.id, "flow": found.run.agent, "events": f"/runs/{found.run.id}/events",
                    "status": RunStatus.QUEUED}
        if not await service.admit(max_queued):
            raise HTTPException(429, f"{service.max_runs} runs are in flight and {max_queued} more wait")
        started = await service.resume(offer.checked, found, file=str(offer.path))
        return {"id": started.id, "flow": found.run.agent, "events": f"/runs/{started.id}/events"}

    @app.post("/runs/{run_id}/resume", responses=problems(404, 409, 429))
    async def resume_run(run_id: str = RUN_ID) -> dict[str, Any]:
        """Go on with a run that stopped (interrupted, paused, failed or crashed) from its last stored step."""
        return await resume(run_id)

    @app.post("/runs/{run_id}/answer", responses=problems(404, 409, 422, 429))
    async def answer_run(body: AnswerRequest, run_id: str = RUN_ID) -> dict[str, Any]:
        """Answer what a waiting run asks (its input step's question; the `input.required` event says what), and
        go on with the run. An answer that does not fit is refused (422) and the run still waits; a run that does
        not wait, or an answer that came too late or second, is refused (409)."""
        asked = await service.answer(run_id, body.value, body.step)
        answered = {"step": asked.question.step, "key": asked.question.key}
        try:
            return {**await resume(asked.root.id), **answered, "resumed": True}
        except (FlowrunError, HTTPException) as exc:  # recorded all the same: resumable later, here or elsewhere
            why = exc.detail if isinstance(exc, HTTPException) else str(exc)
            return {"id": asked.root.id, **answered, "resumed": False, "why": why}

    @app.get("/runs/{run_id}/events", responses=problems(404))
    async def run_events(run_id: str = RUN_ID, last_event_id: str | None = Header(default=None)) -> StreamingResponse:
        """The run's events as Server-Sent Events, until its end: after Last-Event-ID, if given. Of a run that has
        ended, or that came to this server resumed, those before are its step.ended and run.ended events."""
        found = await service.run_id(run_id)  # 404 for a run that does not exist
        after = int(last_event_id) if last_event_id and _NUMBER.fullmatch(last_event_id) else 0

        async def stream() -> AsyncIterator[str]:
            async for event in service.events(found, after):
                yield f"id: {event.seq}\nevent: {event.type}\ndata: {json.dumps(event.data())}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


class _Guard:
    """Refuses a request without the token (when there is one) or with a body of a length not said or over the
    limit, before any route sees it. Plain ASGI: Starlette's `@app.middleware("http")` runs each request in a task
    of its own behind memory streams, which took most of the server's time per request under load."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = self._refusal(scope) if scope["type"] == "http" else None
        await (refused or self.app)(scope, receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        headers = Headers(scope=scope)
        if self.token is not None and scope["path"] != "/healthz":
            scheme, _, given = headers.get("authorization", "").partition(" ")
            # the scheme's name is case-insensitive (RFC 9110 11.1); the token is compared in constant time
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return problem(401, "Unauthorized", "send the server's token: `Authorization: Bearer TOKEN`")
        length = headers.get("content-length")
        if length is None and "transfer-encoding" in headers:  # a body of a length not said up front
            return problem(411, "Length Required", "send the body with a Content-Length")
        if length is not None:
            if not _NUMBER.fullmatch(length):
                return problem(400, "Bad Request", "Content-Length is a number of bytes")
            if int(length) > self.max_body:
                return problem(413, "Content Too Large", f"a request body may have at most {self.max_body} bytes")
        return None


def _methods(app: FastAPI, path: str) -> list[str]:
    """The methods of the routes of the path template `path` matches most literally (/flows/validate rather than
    /flows/{name})."""
    matching = [r for r in app.routes if isinstance(r, APIRoute) and r.path_regex.match(path)]
    if not matching:
        return []
    best = min(matching, key=lambda r: r.path.count("{")).path
    return sorted({m for r in matching if r.path == best for m in r.methods})


def _flow_summary(name: str, found: Offered) -> dict[str, Any]:
    flow = found.checked.flow
    return {"name": name, "file": str(found.path), "description": flow.description, "inputs": flow.inputs}


def _run_summary(run: Any) -> dict[str, Any]:
    return {"id": run.id, "agent": run.agent, "flow": run.flow, "status": run.status, "batch": run.batch,
            "created": run.created, "finished": run.finished, "answer": run.answer, "error": run.error,
            "asking": run.asking}
