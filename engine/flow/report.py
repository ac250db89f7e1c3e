"""Writing a validation report as text, JSON, GitHub workflow commands or SARIF 2.1.0."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import click

from engine import __version__
from engine.flow.diagnostics import RULES, Diagnostic, Rule, Severity
from engine.flow.validate import Report, repository_root

FORMATS = ("text", "json", "github", "sarif")
HOME = "https://flowrun.dev/"  # the project's home page: the README


def render_report(report: Report, fmt: str, *, color: bool = False) -> str:
    """The report in format `fmt` (one of FORMATS)."""
    return {"text": _text, "json": _json, "github": _github, "sarif": _sarif}[fmt](report, color)


def summary(report: Report) -> str:
    """One line: how many files and problems."""
    errors, warnings = report.count(Severity.ERROR), report.count(Severity.WARNING)
    files = f"{len(report.files)} file{'s' * (len(report.files) != 1)}"
    if not errors and not warnings:
        return f"{files} checked: no problems"
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)} in {files}"


def _text(report: Report, color: bool) -> str:
    colors = {Severity.ERROR: "red", Severity.WARNING: "yellow"}
    lines = []
    for d in report.diagnostics:
        severity = click.style(d.severity.value, fg=colors[d.severity], bold=True) if color else d.severity.value
        lines.append(f"{d.file}:{d.line}:{d.column}: {severity} {d.code} {d.name}: {d.message}")
    lines.append(summary(report))
    return "\n".join(lines)


def _as_dict(d: Diagnostic) -> dict[str, object]:
    return {"code": d.code, "name": d.name, "severity": d.severity.value, "message": d.message,
            "file": d.file, "line": d.line, "column": d.column}


def _json(report: Report, color: bool) -> str:
    return json.dumps({
        "files": report.files,
        "errors": report.count(Severity.ERROR),
        "warnings": report.count(Severity.WARNING),
        "diagnostics": [_as_dict(d) for d in report.diagnostics],
    }, indent=2)


def _escape(text: str, *, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def _github(report: Report, color: bool) -> str:
    lines = [
        f"::{d.severity.value} file={_escape(d.file, prop=True)},line={d.line},col={d.column},"
        f"title={_escape(f'{d.code} {d.name}', prop=True)}::{_escape(d.message)}"
        for d in report.diagnostics
    ]
    lines.append(summary(report))
    return "\n".join(lines)


def _uri(file: str, root: Path) -> str:
    """`file` relative to `root` (code scanning matches results to the repository's files so), else absolute."""
    path = Path(os.path.abspath(file))  # without `..`, which code scanning does not resolve
    try:
        return quote(path.relative_to(root).as_posix())
    except ValueError:
        return path.as_uri()


def _rule(rule: Rule) -> dict[str, object]:
    link = f"{HOME}#{rule.code.lower()}"  # the README's rule table has an anchor per code
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": f"{rule.code} {rule.name} ({rule.severity.value}): {rule.summary}"},
        "help": {
            "text": f"{rule.summary} Fix: {rule.fix}",
            "markdown": f"{rule.summary}\n\n**Fix:** {rule.fix}\n\n[{rule.code} in flowrun's rule table]({link})",
        },
        "helpUri": link,
        "defaultConfiguration": {"level": rule.severity.value},
    }


def _sarif(report: Report, color: bool) -> str:
    codes = list(RULES)
    root = repository_root(Path.cwd()) or Path.cwd()
    rules = [_rule(rule) for rule in RULES.values()]
    results = [
        {
            "ruleId": d.code,
            "ruleIndex": codes.index(d.code),
            "level": d.severity.value,
            "message": {"text": d.message},
            "locations": [{
                "physicalLocation": {
                    "artifactLocation": {"uri": _uri(d.file, root)},
                    "region": {"startLine": d.line, "startColumn": d.column},
                }
            }],
        }
        for d in report.diagnostics
    ]
    log = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "flowrun", "version": __version__, "informationUri": HOME, "rules": rules}},
            "results": results,
        }],
    }
    return json.dumps(log, indent=2)
