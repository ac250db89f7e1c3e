"""What a run asks a person (an input step's Question) and what comes back (an Answer, or its time running out), as
the kernel records it: an `input` syscall whose text is the answer as JSON, so that a resumed or replayed run is
given it back like a model's answer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.json_schema import schema_problems
from engine.jsontext import parse_json


@dataclass(frozen=True)
class Question:
    """Step `step` (visit `visit`) of a run asks `prompt`: the answer is one of `labels`, or else data matching
    `schema` (None: any text). `key` is its request key; past `deadline` (seconds since the epoch; None: never) it
    times out."""

    key: str
    step: str
    visit: int
    prompt: str
    schema: dict[str, Any] | None = None
    labels: tuple[str, ...] = ()
    deadline: float | None = None
    seq: int = 0  # the number of the input.required event that asked it

    def data(self) -> dict[str, Any]:
        """As the run's row keeps it (runs.asking)."""
        return {**asdict(self), "labels": list(self.labels)}

    @classmethod
    def of(cls, data: dict[str, Any]) -> Question:
        return cls(**{**data, "labels": tuple(data.get("labels") or ())})

    def problems(self, value: Any) -> list[str]:
        """What is wrong with `value` as an answer: not one of the labels, or not matching the schema."""
        if self.labels:
            return [] if value in self.labels else [f"{_shown(value)} is not one of {', '.join(self.labels)}"]
        if self.schema is None:
            return [] if isinstance(value, str) else [f"{_shown(value)} is not text"]
        return schema_problems(self.schema, value, "the answer")

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now if now is not None else time.time()) >= self.deadline


@dataclass(frozen=True)
class Answer:
    """A person's answer `value`, or (`timed_out`) none in time; `given`: when it was given."""

    value: Any = None
    timed_out: bool = False
    given: float = field(default_factory=time.time)

    def text(self) -> str:
        """As its input syscall records it."""
        return json.dumps({"timed_out": True} if self.timed_out else {"answer": self.value}, ensure_ascii=False)

    @classmethod
    def read(cls, text: str) -> Answer:
        """The answer an input syscall recorded (ValueError if it is not one)."""
        data = parse_json(text)
        if not isinstance(data, dict) or not ("answer" in data or data.get("timed_out") is True):
            raise ValueError("not an input's answer")
        return cls(data.get("answer"), data.get("timed_out") is True)


@dataclass
class Given:
    """Answers given in advance (a test case's, an eval case's), by request key: for each key, the answers of its
    visits in turn; the keys in `timeouts` time out every visit. An answer that does not fit is given all the same
    (the step then fails, as it would)."""

    answers: dict[str, list[Any]] = field(default_factory=dict)
    timeouts: frozenset[str] = frozenset()

    @classmethod
    def of(cls, answers: dict[str, Any], timeouts: Iterable[str] = ()) -> Given:
        """`answers` as a test case writes them: one answer, or a list of them, by key."""
        return cls({key: list(v) if isinstance(v, list) else [v] for key, v in answers.items()}, frozenset(timeouts))

    def next(self, question: Question) -> Answer | None:
        """The answer to `question`; None when none is left (the run waits)."""
        if question.key in self.timeouts:
            return Answer(timed_out=True)
        left = self.answers.get(question.key)
        return Answer(left.pop(0)) if left else None


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:79] + "…"
