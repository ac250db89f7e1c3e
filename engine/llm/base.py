"""The one protocol every model backend speaks, and the plain data that crosses it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import ErrorKind, RunFailure, RunStatus


class BackendError(RunFailure):
    """The model backend failed; the message says why and what to do."""


class ModelUnavailable(BackendError):
    """The model could not be reached, or failed in a way that may pass (refused, stalled, a server error, a stream
    cut off): worth trying again later. It pauses the run it stops, to be resumed when the model is back."""

    ends_run = RunStatus.PAUSED
    kind = ErrorKind.MODEL_UNAVAILABLE


# Called with each generated token; returning True asks the backend to stop (the scheduler's slice is over).
OnToken = Callable[[str], bool]


@dataclass
class Request:
    """What to generate: chat messages, an optional JSON Schema (or GBNF grammar) the output must match, options.

    `key` names the request for backends that answer from a script (the interpreter passes the step id), and
    `run` the run it is for (the kernel sets it), for those that answer each run from a script of its own.
    """

    messages: list[dict[str, str]]
    schema: dict[str, Any] | None = None
    grammar: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    run: str = ""


def sample_key(key: str, n: int) -> str:
    """The key of sample `n` (from 1) of the request keyed `key`: one of several drawn at once, which may be answered
    in any order."""
    return f"{key}#{n}"


def sampled(key: str) -> str | None:
    """The key of the request whose sample (sample_key) `key` is; None when it is no sample's."""
    base, mark, n = key.partition("#")
    return base if mark and n.isdigit() else None


STRING_ROOM = 160  # characters, for a string a schema leaves unbounded
ITEMS_ROOM = 10  # items, for an array a schema leaves unbounded


def bounded(schema: Any) -> Any:
    """`schema` with a maxLength on every free string, a maxItems on every array and no properties besides the
    declared ones on every object, where it does not say otherwise.

    Given to a constrained decoder, it makes a small model close its JSON instead of writing one string until
    max_tokens runs out. The answer is still checked against the schema as written.
    """
    if isinstance(schema, list):
        return [bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v) for k, v in schema.items()}
    free = not {"enum", "const", "format", "pattern"} & schema.keys()
    if schema.get("type") == "string" and free and "maxLength" not in schema:
        out["maxLength"] = max(STRING_ROOM, schema.get("minLength", 0))
    if schema.get("type") == "array" and "maxItems" not in schema:
        out["maxItems"] = max(ITEMS_ROOM, schema.get("minItems", 0))
    if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


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
