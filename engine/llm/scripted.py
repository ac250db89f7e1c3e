"""The `scripted` backend: deterministic answers from a cassette, streamed token by token.

A cassette is YAML (read by the layer above, with the flow loader's YAML 1.2 rules, so `text: yes` stays text):

    responses:
      - key: parse_query            # for requests with this key (the interpreter uses the step id), in order
        text: '{"days": 3, "origin": "Seattle"}'
      - key: vote#2                 # for sample 2 of step vote (`samples: N`); `key: vote` serves its samples too
        text: yes
      - key: [breakfast, lunch]     # for requests with any of these keys
        text: '{"tool": "restaurant_search", "arguments": {"city": "Austin"}}'
        times: 4                    # answers this many requests (default 1)
      - prompt: "state or a city"   # for requests whose prompt matches this regular expression (engine.patterns)
        text: state
      - text: Any other request gets the unkeyed, prompt-less entries in order.

Each entry answers `times` requests. Tokens are runs of non-space text with the spaces before them, so a slice of k
tokens is the same on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

import regex

from engine.errors import RunFailure
from engine.llm.base import OnToken, Request, Result, Snapshot, sampled
from engine.patterns import PatternError, compile_pattern, found_in

_TOKEN = re.compile(r"\s*\S+|\s+\Z")


def tokenize(text: str) -> list[str]:
    """The scripted backend's tokens of `text`; joined, they give `text` back."""
    return _TOKEN.findall(text)


class CassetteError(RunFailure):
    """The cassette is malformed or has no answer for a request. `at`: the path to the bad value within the
    cassette's `responses` (empty when it is not one value)."""

    def __init__(self, message: str, at: tuple[int | str, ...] = ()) -> None:
        super().__init__(message)
        self.at = at


@dataclass
class _Entry:
    text: str
    keys: frozenset[str] | None = None
    prompt: regex.Pattern[str] | None = None
    left: int = 1  # requests it may still answer


@dataclass
class ScriptedBackend:
    """Answers from cassette entries; `token_delay` seconds pass between tokens (0 still yields to other tasks)."""

    entries: list[_Entry]
    slots: int = 1
    token_delay: float = 0.0
    context: int = 1_000_000
    name: str = field(default="scripted", init=False)

    @classmethod
    def from_responses(cls, responses: Any, **options: Any) -> ScriptedBackend:
        """A backend answering with `responses` (the `responses` list of a cassette)."""
        if not isinstance(responses, list):
            raise CassetteError("a cassette's `responses` is a list")
        entries = []
        for i, item in enumerate(responses):
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise CassetteError(f"response {i + 1} needs a `text` string", (i,))
            key, prompt, times = item.get("key"), item.get("prompt"), item.get("times", 1)
            keys = [key] if isinstance(key, str) else key
            if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
                raise CassetteError(f"response {i + 1}: `key` is a step id or a list of them", (i, "key"))
            if not isinstance(times, int) or isinstance(times, bool) or times < 1:
                raise CassetteError(f"response {i + 1}: `times` is a whole number of at least 1", (i, "times"))
            if prompt is not None and not isinstance(prompt, str):
                raise CassetteError(f"response {i + 1}: `prompt` is a regular expression, as text", (i, "prompt"))
            try:
                pattern = compile_pattern(prompt) if prompt else None
            except PatternError as exc:
                raise CassetteError(f"response {i + 1}: `prompt` is {exc}", (i, "prompt")) from None
            entries.append(_Entry(item["text"], None if keys is None else frozenset(keys), pattern, times))
        return cls(entries, **options)

    def answer(self, request: Request) -> str:
        """The text of the first entry left for `request`: by key (a sample's, `step#n`, else its step's), else by
        prompt, else in order."""
        prompt = "\n".join(m.get("content", "") for m in request.messages)
        of = sampled(request.key)
        for fits in (
            lambda e: e.keys is not None and request.key in e.keys,
            lambda e: e.keys is not None and of in e.keys,
            lambda e: e.keys is None and e.prompt is not None and _prompted(e.prompt, prompt),
            lambda e: e.keys is None and e.prompt is None,
        ):
            for entry in self.entries:
                if entry.left and fits(entry):
                    entry.left -= 1
                    return entry.text
        raise CassetteError(f"the cassette has no answer left for request {request.key or prompt[:60]!r}")

    def skip(self, keys: list[str]) -> None:
        """Use up the answers to requests with `keys`, in order, as if they had been asked (a resumed run got them
        in an earlier process)."""
        for key in keys:
            with contextlib.suppress(CassetteError):
                self.answer(Request([], key=key))

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        # len(tokenize(text)) without building the tokens: runs of non-space, and trailing space as one more
        return sum(len(c.split()) + (c[-1:].isspace()) for m in messages if (c := m.get("content", "")))

    async def generate(self, request: Request, on_token: OnToken, resume: Snapshot | None = None) -> Result:
        text = resume.state if resume else self.answer(request)
        tokens = tokenize(text)
        limit = request.options.get("max_tokens")
        done = start = resume.tokens if resume else 0
        # as a model server counts it, whose prompt ends with the text a resumed generation had so far
        prompt_tokens = self.count_tokens(request.messages) + start
        while done < len(tokens):
            if limit is not None and done >= limit:
                return Result("".join(tokens[:done]), "length", prompt_tokens, done - start)
            await asyncio.sleep(self.token_delay)
            done += 1
            if on_token(tokens[done - 1]) and done < len(tokens):
                so_far = "".join(tokens[:done])
                return Result(so_far, "suspended", prompt_tokens, done - start, Snapshot(so_far, done, text))
        return Result(text, "stop", prompt_tokens, done - start)


@dataclass
class RunScripts:
    """Answers each run from a cassette of its own (`scripts`, by run id; Request.run says whose a request is):
    many runs, each with its recorded answers, sharing one kernel and its scheduler."""

    scripts: dict[str, ScriptedBackend] = field(default_factory=dict)
    slots: int = 1
    context: int = 1_000_000
    name: str = field(default="scripted", init=False)
    count_tokens = ScriptedBackend.count_tokens  # it counts words, whoever asks

    async def generate(self, request: Request, on_token: OnToken, resume: Snapshot | None = None) -> Result:
        if request.run not in self.scripts:
            raise CassetteError(f"no recorded answers for run {request.run or '(none named)'}")
        return await self.scripts[request.run].generate(request, on_token, resume)


def _prompted(pattern: regex.Pattern[str], prompt: str) -> bool:
    try:
        return found_in(pattern, prompt)
    except PatternError as exc:
        raise CassetteError(f"a response's `prompt`: {exc}") from None
