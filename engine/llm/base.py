"""The one protocol every model backend speaks, and the plain data that crosses it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class BackendError(Exception):
    """The model backend failed; the message says why and what to do."""


# Called with each generated token; returning True asks the backend to stop (the scheduler's slice is over).
OnToken = Callable[[str], bool]


@dataclass
class Request:
    """What to generate: chat messages, an optional JSON Schema (or GBNF grammar) the output must match, options.

    `key` names the request for backends that answer from a script (the interpreter passes the step id).
    """

    messages: list[dict[str, str]]
    schema: dict[str, Any] | None = None
    grammar: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    key: str = ""


@dataclass
class Snapshot:
    """A generation stopped midway: the text so far, and whatever the backend needs to go on from there."""

    text: str
    tokens: int
    state: Any = None  # backend-specific, e.g. a saved KV cache


def remaining_tokens(request: Request, resume: Snapshot | None) -> int | None:
    """How many tokens `request`'s max_tokens still allows after `resume` (None: no limit)."""
    limit = request.options.get("max_tokens")
    return None if limit is None else limit - (resume.tokens if resume else 0)


@dataclass
class Result:
    """How a generation ended. `finish` is "stop", "length" or "suspended" (then `snapshot` says where).

    `text` is the whole text so far, resumed part included; the token counts are those of this call.
    """

    text: str
    finish: str
    prompt_tokens: int
    completion_tokens: int
    snapshot: Snapshot | None = None


class Backend(Protocol):
    """A model backend: `slots` generations can run at once, each in a window of `context` tokens; `generate`
    streams tokens to `on_token`."""

    name: str
    slots: int
    context: int

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """How many tokens `messages` take as a prompt (an upper estimate where the backend cannot count)."""
        ...

    async def generate(self, request: Request, on_token: OnToken, resume: Snapshot | None = None) -> Result:
        """Generate for `request`, continuing `resume` if given, until done or `on_token` returns True."""
        ...
