"""The `ollama` backend: an Ollama server through the official client (AsyncClient), host from OLLAMA_HOST.

Structured output goes as `format=<JSON Schema>`. A suspended generation resumes by sending its partial text as a
final assistant message, which /api/chat continues instead of starting a new one (ollama/ollama#6778). The server
re-tokenizes that text, so unlike the embedded backend a resume is not guaranteed token-exact. As with the
embedded backend, a generation constrained by a schema is not suspended. `slots` should match the server's
OLLAMA_NUM_PARALLEL. A server that refuses, stays silent for FLOWRUN_MODEL_TIMEOUT seconds (default 300), answers
429 or 5xx, or cuts the stream off raises ModelUnavailable, which the kernel retries.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import ollama

from engine.llm.base import (
    BackendError,
    ModelUnavailable,
    OnToken,
    Request,
    Result,
    Snapshot,
    bounded,
    remaining_tokens,
)
from engine.settings import number

DEFAULT_HOST = "http://localhost:11434"
# Ollama has no DRY sampler: dry_multiplier and dry_allowed_length are not sent (its own repeat_penalty, 1.1 unless
# the options set one, acts instead).
_OPTIONS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "seed": "seed", "stop": "stop",
            "num_ctx": "num_ctx", "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n"}


def host() -> str:
    """The Ollama server to use: OLLAMA_HOST, else localhost:11434."""
    found = os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
    return found if "://" in found else f"http://{found}"


class OllamaBackend:
    """Model `model` on the Ollama server at `server` (default: host())."""

    name = "ollama"

    def __init__(self, model: str, *, server: str | None = None, slots: int | None = None,
                 context: int = 4096) -> None:
        self.model = model
        self.server = server or host()
        self.slots = slots or max(1, int(number("OLLAMA_NUM_PARALLEL", 1, whole=True)))
        self.context = context  # sent as num_ctx unless the request sets it
        self._silence = number("FLOWRUN_MODEL_TIMEOUT", 300)  # seconds without a byte: the server stalled
        self._client = ollama.AsyncClient(host=self.server,
                                          timeout=httpx.Timeout(self._silence, connect=min(10, self._silence)))

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        # Ollama has no tokenizer endpoint: an upper estimate (tokens rarely hold fewer than 3 characters).
        return sum(len(m.get("content", "")) // 3 + 4 for m in messages)

    async def generate(self, request: Request, on_token: OnToken, resume: Snapshot | None = None) -> Result:
        if request.grammar is not None:
            raise BackendError("the ollama backend cannot follow a GBNF grammar: give a JSON schema instead")
        messages = [*request.messages, *([{"role": "assistant", "content": resume.text}] if resume else [])]
        options: dict[str, Any] = {"num_ctx": self.context}
        options |= {ours: request.options[key] for key, ours in _OPTIONS.items() if key in request.options}
        done_before = resume.tokens if resume else 0
        left = remaining_tokens(request, resume)
        if left is not None:
            if left <= 0:
                return Result(resume.text if resume else "", "length", 0, 0)
            options["num_predict"] = left
        pieces = [resume.text] if resume else []
        new, prompt_tokens = 0, 0
        try:
            stream = await self._client.chat(model=self.model, messages=messages, stream=True,
                                             format=bounded(request.schema), options=options)
            async for part in stream:
                content = part.message.content or ""
                if content:
                    pieces.append(content)
                    new += 1
                    if on_token(content) and request.schema is None and not part.done:
                        await stream.aclose()  # closing the stream stops the generation on the server
                        text = "".join(pieces)
                        return Result(text, "suspended", prompt_tokens, new, Snapshot(text, done_before + new))
                if part.done:
                    finish = "length" if part.done_reason == "length" else "stop"
                    return Result("".join(pieces), finish, part.prompt_eval_count or 0, part.eval_count or new)
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                raise BackendError(f"model {self.model!r} is not on the Ollama server at {self.server}: "
                                   f"run `ollama pull {self.model}`") from None
            error = ModelUnavailable if exc.status_code == 429 or exc.status_code >= 500 else BackendError
            raise error(f"the Ollama server at {self.server} answered {exc.status_code}: {exc.error}") from None
        except (ConnectionError, httpx.ConnectError):  # the client wraps it for some calls, not for streams
            raise ModelUnavailable(f"no Ollama server answers at {self.server}: start one with `ollama serve`, "
                                   "set OLLAMA_HOST, or use --backend embedded") from None
        except httpx.TimeoutException:
            raise ModelUnavailable(f"the Ollama server at {self.server} said nothing for {self._silence:g} s "
                                   "(FLOWRUN_MODEL_TIMEOUT)") from None
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"the Ollama server at {self.server} broke off the generation: {exc}") from None
        raise ModelUnavailable(f"the Ollama server at {self.server} ended the stream before the generation was done")
