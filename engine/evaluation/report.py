"""Evaluations shown: as text (a table of figures, one column per configuration and the differences to the
first, then the failing cases), as Markdown (the same table, for a README) or as one JSON object (stable keys)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.console import printable, table
from engine.evaluation.runner import Evaluation
from engine.evaluation.stats import CONFIDENCE

FORMATS = ("text", "json", "markdown")


def render(evaluations: Sequence[Evaluation], fmt: str) -> str:
    """`evaluations` (the first is the one compared against) in format `fmt` (text, markdown; json: see as_json)."""
    headers, rows = _figures(evaluations)
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(_escaped(c) for c in row) + " |" for row in rows]
        return "\n".join([*lines, "", _interval_note(evaluations)])
    lines = [f"{len(evaluations[0].results)} cases of {evaluations[0].data}", "", table(headers, rows), "",
             _interval_note(evaluations)]
    for n, evaluation in enumerate(evaluations, 1):
        failing = [r for r in evaluation.results if not r.passed]
        if failing:
            lines += ["", f"failing cases of {n}: {evaluation.label} (open one with `flowrun runs show RUN`):"]
            lines += [printable(f"  {r.name} · run {r.run_id[:12] if r.run_id else '-'} · score {r.score:g}: "
                                + "; ".join(r.reasons)) for r in failing]
    return "\n".join(lines)


def as_json(evaluations: Sequence[Evaluation]) -> dict[str, Any]:
    """One object: each configuration with its figures and case results, and its differences to the first."""
    first = evaluations[0]
    return {"data": str(first.data), "configurations": [_configuration(e) for e in evaluations],
            "differences": [{"label": e.label, "accuracy": e.accuracy - first.accuracy,
                             **{k: v - first.per_case()[k] for k, v in e.per_case().items()}}
                            for e in evaluations[1:]]}


def _configuration(e: Evaluation) -> dict[str, Any]:
    low, high = e.interval
    return {
        "label": e.label, "flow": str(e.config.flow), "backend": e.config.backend, "model": e.model,
        "batch": e.batch, "cases": len(e.results), "passed": e.passed, "accuracy": e.accuracy,
        "interval": {"low": low, "high": high, "confidence": CONFIDENCE, "method": _method(e)},
        "routes": {step: {"right": right, "labelled": labelled, "accuracy": right / labelled}
                   for step, (right, labelled) in e.routes.items()},
        "per_case": e.per_case(),
        "results": [{"name": r.name, "passed": r.passed, "score": r.score, "status": r.status, "run_id": r.run_id,
                     "reasons": r.reasons, "answer": r.answer, "judge_run_id": r.judge_run,
                     "routes": {step: {"right": right, "labelled": labelled}
                                for step, (right, labelled) in r.routes.items()},
                     "tokens": r.tokens, "model_calls": r.calls, "seconds": r.seconds} for r in e.results],
    }


def _method(e: Evaluation) -> str:
    return "wilson-fractional" if e.fractional else "wilson"


def _interval_note(evaluations: Sequence[Evaluation]) -> str:
    note = f"{CONFIDENCE:.0%} CI: the Wilson score interval"
    if any(e.fractional for e in evaluations):
        note += (" (fractional scores: over the sum of the scores, which is conservative, as a score in [0, 1] "
                 "varies no more than a pass/fail one)")
    return note


def _figures(evaluations: Sequence[Evaluation]) -> tuple[list[str], list[list[str]]]:
    """A row per figure, a column per configuration, then one per difference to the first."""
    many = len(evaluations) > 1
    headers = ["", *(f"{n}: {e.label}" if many else e.label for n, e in enumerate(evaluations, 1)),
               *(f"{n} - 1" for n in range(2, len(evaluations) + 1))]

    def row(name: str, shown: Any, value: Any, fmt: str) -> list[str]:
        values = [value(e) for e in evaluations]
        return [name, *(shown(e) for e in evaluations),
                *("" if v is None or values[0] is None else format(v - values[0], fmt) for v in values[1:])]

    rows = [
        row("accuracy", lambda e: f"{e.accuracy:.3f}", lambda e: e.accuracy, "+.3f"),
        row("passed", lambda e: f"{e.passed} of {len(e.results)}", lambda e: e.passed, "+d"),
        row(f"{CONFIDENCE:.0%} CI", lambda e: "{:.3f} to {:.3f}".format(*e.interval), lambda e: None, ""),
    ]
    for step in sorted({s for e in evaluations for s in e.routes}):
        rows.append(row(f"route {step}", lambda e, s=step: _route(e.routes.get(s)),
                        lambda e, s=step: _share(e.routes.get(s)), "+.3f"))
    for key, name, fmt in (("tokens", "tokens per case", ".1f"), ("model_calls", "model calls per case", ".1f"),
                           ("seconds", "seconds per case", ".2f")):
        rows.append(row(name, lambda e, k=key, f=fmt: format(e.per_case()[k], f), lambda e, k=key: e.per_case()[k],
                        "+" + fmt))
    rows.append(row("batch", lambda e: e.batch[:12], lambda e: None, ""))
    return headers, rows


def _route(tally: tuple[int, int] | None) -> str:
    return "" if tally is None else f"{tally[0]}/{tally[1]} ({tally[0] / tally[1]:.3f})"


def _share(tally: tuple[int, int] | None) -> float | None:
    return None if tally is None else tally[0] / tally[1]


def _escaped(cell: str) -> str:
    return printable(cell).replace("|", "\\|")
