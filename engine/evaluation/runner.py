"""Evaluating a flow on a data file: every case run as `flowrun batch` runs inputs (one kernel, its scheduler,
`concurrency` runs at once, each run stored), then scored: its answer against the case's checks, scorers and judge
flows, and its decisions against the case's routes.

On the `cassette` backend each case's run answers from the case's own `responses` (engine.llm.scripted.RunScripts
serves them all on one kernel); a judge's run answers from the same responses, keyed by the judge's step ids.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine import answers
from engine.errors import RunStatus
from engine.evaluation.dataset import Dataset, EvalCase, EvalError, case_inputs
from engine.evaluation.scoring import Scorers, answer_score, routes_taken, verdict
from engine.evaluation.stats import wilson
from engine.flow.validate import CheckedFlow
from engine.interpreter.runs import figures
from engine.interpreter.setup import kernel_for, open_backend_for
from engine.interpreter.walk import RunOutcome, new_run_id
from engine.kernel.asking import Answer, Given, Question
from engine.kernel.confine import write_files
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage
from engine.kernel.tables import StepRow
from engine.llm.models import DEFAULT_MODEL
from engine.llm.scripted import RunScripts, ScriptedBackend
from engine.service import Service

CASSETTE = "cassette"
BACKENDS = (CASSETTE, "auto", "ollama", "embedded")
COMPARED = ("model", "backend", "flow")  # what a --compare SPEC may change


@dataclass(frozen=True)
class Config:
    """What to evaluate: a flow file, on a backend (cassette: each case's recorded answers), with a model (None:
    the flow's model.name, else the default; a cassette has none)."""

    flow: Path
    backend: str = CASSETTE
    model: str | None = None

    def compared(self, spec: str) -> Config:
        """This configuration with what `spec` changes: model=NAME, backend=KIND or flow=PATH, or several of them
        joined by commas (backend=ollama,model=qwen2.5:0.5b)."""
        changes: dict[str, Any] = {}
        for part in spec.split(","):
            key, sep, value = part.partition("=")
            if not sep or key not in COMPARED or not value:
                raise EvalError(f"--compare {spec!r}: give model=NAME, backend=KIND or flow=PATH (several joined by "
                                "commas)")
            if key == "backend" and value not in BACKENDS:
                raise EvalError(f"--compare {spec!r}: the backend is one of {', '.join(BACKENDS)}")
            if key == "flow" and not Path(value).is_file():
                raise EvalError(f"--compare {spec!r}: there is no flow file {value}")
            changes[key] = Path(value) if key == "flow" else value
        compared = replace(self, **changes)
        if "model" in changes and compared.backend == CASSETTE:
            raise EvalError(f"--compare {spec!r}: the cassette backend has no model: compare models on a model "
                            "backend (--backend, or backend=KIND,model=NAME)")
        return compared


@dataclass
class CaseResult:
    """How one case went. `score` is in [0, 1]; the case passed when it is 1. `reasons`: why it is less.
    `routes`: per decision of the case's routes, (right labels, labelled visits)."""

    name: str
    score: float
    reasons: list[str]
    status: str  # the run's (finished, failed, paused...), or "not run"
    run_id: str | None = None
    answer: Any = None
    routes: dict[str, tuple[int, int]] = field(default_factory=dict)
    judge_run: str | None = None
    tokens: int = 0
    calls: int = 0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.score >= 1


@dataclass
class Evaluation:
    """A configuration's results on a data file, with its figures."""

    config: Config
    model: str | None  # the model it ran on (None on the cassette backend)
    data: Path
    batch: str
    results: list[CaseResult]

    @property
    def label(self) -> str:
        return f"{self.config.flow} on {self.config.backend}" + (f" {self.model}" if self.model else "")

    @property
    def accuracy(self) -> float:
        return sum(r.score for r in self.results) / len(self.results) if self.results else 0.0

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def fractional(self) -> bool:
        """Whether some score is neither 0 nor 1 (a scorer's or judge's number)."""
        return any(r.score not in (0.0, 1.0) for r in self.results)

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% Wilson score interval of the accuracy (engine.evaluation.stats)."""
        return wilson(sum(r.score for r in self.results), len(self.results))

    @property
    def routes(self) -> dict[str, tuple[int, int]]:
        """Per decision: (right labels, labelled visits) over every case."""
        total: dict[str, tuple[int, int]] = {}
        for result in self.results:
            for step, (right, labelled) in result.routes.items():
                had = total.get(step, (0, 0))
                total[step] = (had[0] + right, had[1] + labelled)
        return dict(sorted(total.items()))

    def per_case(self) -> dict[str, float]:
        """Tokens, model calls and seconds (wall time of the run), averaged over the cases that ran."""
        ran = [r for r in self.results if r.run_id is not None]
        n = max(1, len(ran))
        return {"tokens": sum(r.tokens for r in ran) / n, "model_calls": sum(r.calls for r in ran) / n,
                "seconds": sum(r.seconds for r in ran) / n}


@dataclass
class Plan:
    """An evaluation set up to run: its kernel, and the id of each case's run, for the cases that run."""

    config: Config
    checked: CheckedFlow
    dataset: Dataset
    inputs: dict[str, dict[str, Any]]
    kernel: Kernel
    model: str | None
    concurrency: int
    run_ids: dict[str, str]  # by case name
    batch: str = field(default_factory=lambda: uuid.uuid4().hex)


def prepare(config: Config, checked: CheckedFlow, dataset: Dataset, storage: Storage, *, concurrency: int = 4,
            say: Callable[[str], None] = lambda _: None) -> Plan:
    """Set up evaluating `checked` (the flow of `config`, valid) on `dataset`, its runs stored in `storage`.

    Raises EvalError where the cases do not fit the flow, and what opening the model backend raises.
    """
    inputs = case_inputs(dataset, checked)
    cassette = config.backend == CASSETTE
    model = None if cassette else config.model or checked.flow.model.get("name") or DEFAULT_MODEL
    backend = RunScripts() if cassette else open_backend_for(config.backend, model, None, say=say)
    kernel = kernel_for([checked, *dataset.judges.values()], backend, storage)
    runnable = [c for c in dataset.cases if not cassette or c.responses is not None]
    return Plan(config, checked, dataset, inputs, kernel, model, concurrency, {c.name: new_run_id() for c in runnable})


async def evaluate(plan: Plan) -> Evaluation:
    """Run every case of the plan and score it."""
    cases = [c for c in plan.dataset.cases if c.name in plan.run_ids]
    for case in cases:  # where the run's read_file and write_file work (Kernel.call_tool)
        try:
            write_files(plan.kernel.workspaces / plan.run_ids[case.name], case.files)
        except (ValueError, OSError) as exc:
            raise EvalError(f"{plan.dataset.path}:{case.line}: files: {exc}") from None
    given = {plan.run_ids[case.name]: Given.of(case.answers) for case in cases}

    async def answer(run: str, question: Question) -> Answer | None:  # a case's own run's input steps
        return given[run].next(question) if run in given else None

    plan.kernel.answerer = answer
    scripts = plan.kernel.scheduler.backend
    if isinstance(scripts, RunScripts):
        for case in cases:
            scripts.scripts[plan.run_ids[case.name]] = ScriptedBackend.from_responses(case.responses)
    service = Service(plan.kernel)
    outcomes = await service.batch(plan.checked, [plan.inputs[c.name] for c in cases], file=str(plan.config.flow),
                                   concurrency=plan.concurrency, run_ids=[plan.run_ids[c.name] for c in cases],
                                   batch=plan.batch)
    ran = dict(zip([c.name for c in cases], outcomes, strict=True))
    judged = await _judge(plan, service, ran)
    results = await _score(plan, ran, judged)
    return Evaluation(plan.config, plan.model, plan.dataset.path, plan.batch, results)


async def _judge(plan: Plan, service: Service, ran: dict[str, RunOutcome]) -> dict[str, RunOutcome]:
    """The judge runs of the cases that name a judge and finished, by case name."""
    judged: dict[str, RunOutcome] = {}
    for judge, checked in plan.dataset.judges.items():
        cases = [c for c in plan.dataset.cases if c.expect.get("judge") == judge
                 and c.name in ran and ran[c.name].status == RunStatus.FINISHED]
        if not cases:
            continue
        run_ids = [new_run_id() for _ in cases]
        scripts = plan.kernel.scheduler.backend
        if isinstance(scripts, RunScripts):  # the judge answers from the rest of the case's responses
            for case, run_id in zip(cases, run_ids, strict=True):
                scripts.scripts[run_id] = scripts.scripts[plan.run_ids[case.name]]
        inputs = [{"answer": answers.answer_text(ran[c.name].answer), "case": json.dumps(c.data, ensure_ascii=False)}
                  for c in cases]
        outcomes = await service.batch(checked, inputs, file=str(plan.dataset.judge_path(cases[0])),
                                       concurrency=plan.concurrency, run_ids=run_ids, batch=plan.batch)
        judged.update(zip([c.name for c in cases], outcomes, strict=True))
    return judged


async def _score(plan: Plan, ran: dict[str, RunOutcome], judged: dict[str, RunOutcome]) -> list[CaseResult]:
    storage = plan.kernel.storage
    ids = [o.run_id for o in ran.values()]
    found = {f.run.id: f for f in figures(storage, [storage.find_run(i) for i in ids])}
    steps: dict[str, list[StepRow]] = {}
    for step in storage.of_runs(StepRow, ids):
        steps.setdefault(step.run_id, []).append(step)
    entries = sorted({c.expect["scorer"] for c in plan.dataset.cases if "scorer" in c.expect})
    scorers = Scorers(entries, plan.dataset.path.parent, plan.concurrency) if entries else None
    try:
        return list(await asyncio.gather(*(_case(case, ran.get(case.name), judged.get(case.name), scorers, found,
                                                 steps) for case in plan.dataset.cases)))
    finally:
        if scorers is not None:
            scorers.close()


async def _case(case: EvalCase, outcome: RunOutcome | None, judge: RunOutcome | None, scorers: Scorers | None,
                found: dict[str, Any], steps: dict[str, list[StepRow]]) -> CaseResult:
    if outcome is None:
        return CaseResult(case.name, 0.0, [f"case {case.name!r} has no responses: run it on a model with --backend"],
                          "not run")
    figured = found[outcome.run_id]
    result = CaseResult(case.name, 0.0, [], outcome.status, outcome.run_id, outcome.answer,
                        routes_taken(case.routes, steps.get(outcome.run_id, [])), judge and judge.run_id,
                        figured.tokens, figured.calls, figured.turnaround or 0.0)
    if outcome.status != RunStatus.FINISHED:
        result.reasons.append(f"the run {outcome.status}: {outcome.error}")
        return result
    scores = []
    score, result.reasons = answer_score(case.expect, outcome.answer)
    scores.append(score)
    if "scorer" in case.expect and scorers is not None:
        score, reason = await scorers.score(case.expect["scorer"], outcome.answer, case.data)
        scores.append(score)
        if score < 1:
            result.reasons.append(reason or f"the scorer {case.expect['scorer']} gave {score:g}")
    if judge is not None:
        score, reason = _judged(case.expect["judge"], judge)
        scores.append(score)
        if score < 1:
            result.reasons.append(reason)
    result.score = min(scores)  # a case is as good as its weakest check
    return result


def _judged(judge: str, outcome: RunOutcome) -> tuple[float, str]:
    """The judge run's verdict, with why it is less than 1."""
    if outcome.status != RunStatus.FINISHED:
        return 0.0, f"the judge {judge} {outcome.status} (run {outcome.run_id}): {outcome.error}"
    found = verdict(outcome.answer)
    text = answers.answer_text(outcome.answer)[:200]
    if found is None:
        return 0.0, (f"the judge {judge} answered {text} (run {outcome.run_id}): a judge answers pass or fail, "
                     "true or false, a number in [0, 1] or an object with `score`")
    return found[0], found[1] or f"the judge {judge} answered {text} (run {outcome.run_id})"

