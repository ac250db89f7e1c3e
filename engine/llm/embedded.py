"""The `embedded` backend: llama.cpp in this process, through the xllamacpp wheel (no server, no compiler).

A generation resumes token-exactly: its snapshot keeps the ids of the tokens generated so far and a saved copy of
the slot's KV cache. Resuming restores that cache into the slot and continues from the rendered chat prompt
followed by those ids, so nothing is re-tokenized (re-tokenizing the partial text can split it differently and
change what follows) and, with `cache_prompt`, nothing is recomputed. The ids alone suffice: a missing KV file
(the process died, say) only costs recomputing the prefix.

A generation constrained by a JSON Schema or grammar is not suspended when asked: the grammar would start over at
the resume point. It runs to its end; such outputs (labels, small objects) are short.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import threading
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from engine.llm.base import BackendError, OnToken, Request, Result, Snapshot, bounded, remaining_tokens

_SAMPLING = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "seed": "seed", "stop": "stop",
             "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n", "dry_multiplier": "dry_multiplier",
             "dry_allowed_length": "dry_allowed_length"}
# llama.cpp's DRY sampler ("don't repeat yourself") unless the options say otherwise: it penalizes a token that
# would extend a run of tokens already seen in the last 64 (prompt included) past `dry_allowed_length`, which keeps
# a small model from looping on "1.1.1.1..." to max_tokens; it also acts under a JSON Schema or grammar, so a free
# string of structured output cannot be filled that way either. Its sequence breakers (newline, ':', '"', '*') end
# a run, so JSON's punctuation is never penalized (nor, alas, a list repeating one line). 3 lets a name of up to
# three tokens be copied from the prompt freely. A classic repeat penalty stays off (1.0): it penalizes every reuse
# of a token, and on SmolLM2-135M already garbles text at 1.15.
REPETITION = {"dry_multiplier": 0.8, "dry_allowed_length": 3}


class EmbeddedBackend:
    """A GGUF model served in process with `slots` parallel generations of `context` tokens each."""

    name = "embedded"

    def __init__(self, model: Path, *, slots: int = 1, context: int = 4096, threads: int | None = None,
                 state_dir: Path | None = None) -> None:
        import xllamacpp  # here, so that importing flowrun does not load llama.cpp

        self.slots = slots
        self.context = context
        self._state_dir = state_dir or Path(tempfile.mkdtemp(prefix="flowrun-kv-"))
        self._state_dir.mkdir(parents=True, exist_ok=True)
        params = xllamacpp.CommonParams()
        params.model.path = str(model)
        params.n_parallel = slots
        params.n_ctx = context * slots  # llama.cpp divides the context among the slots
        params.verbosity = -1  # llama.cpp logs every load and request to stderr; flowrun reports what matters
        params.endpoint_slots = True
        params.slot_save_path = f"{self._state_dir}/"  # llama.cpp wants the trailing slash
        cores = threads or os.cpu_count() or 1
        params.cpuparams.n_threads = cores
        params.cpuparams_batch.n_threads = cores
        try:
            self._server = xllamacpp.Server(params)
        except Exception as exc:
            raise BackendError(f"cannot load model {model}: {exc}") from exc
        self._address = self._server.listening_address
        self._free = list(range(slots))
        self._lock = threading.Lock()

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return self._count(self._post("/apply-template", {"messages": messages})["prompt"])

    def _count(self, prompt: str) -> int:
        """The tokens of a templated prompt."""
        return len(self._post("/tokenize", {"content": prompt, "add_special": True})["tokens"])

    async def generate(self, request: Request, on_token: OnToken, resume: Snapshot | None = None) -> Result:
        with self._lock:
            if not self._free:
                raise BackendError(f"all {self.slots} slots are busy: the scheduler should not ask for more")
            slot = self._free.pop()
        cancelled = threading.Event()  # a cancelled caller (Ctrl-C) stops the generation at its next token
        try:
            return await asyncio.to_thread(self._generate, request, on_token, resume, slot, cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        finally:
            with self._lock:
                self._free.append(slot)

    def _generate(self, request: Request, on_token: OnToken, resume: Snapshot | None, slot: int,
                  cancelled: threading.Event) -> Result:
        prompt = self._post("/apply-template", {"messages": request.messages})["prompt"]
        ids: list[int] = list(resume.state["ids"]) if resume else []
        if resume:
            self._restore(slot, resume.state["kv"])
        constrained = request.schema is not None or request.grammar is not None
        options = REPETITION | request.options
        body: dict[str, Any] = {
            "prompt": [prompt, *ids] if ids else prompt,
            "stream": True,
            "logprobs": 1,  # streams each token's id, which a token-exact resume needs
            "cache_prompt": True,
            "id_slot": slot,
            **{ours: options[key] for key, ours in _SAMPLING.items() if key in options},
        }
        left = remaining_tokens(request, resume)
        if left is not None:
            if left <= 0:  # suspended right at the limit (llama.cpp reads 0 as "no limit")
                return Result(resume.text if resume else "", "length", 0, 0)
            body["max_tokens"] = left
        if request.schema is not None:
            body["json_schema"] = bounded(request.schema)
        if request.grammar is not None:
            body["grammar"] = request.grammar
        pieces = [resume.text] if resume else []
        state = {"new": 0, "stopped": False, "finish": "stop", "prompt_tokens": 0, "error": None}

        def on_chunk(chunk: Any) -> bool:
            if cancelled.is_set():
                return True
            if isinstance(chunk, dict) and "error" in chunk:
                state["error"] = chunk["error"]
                return True
            choice = (chunk.get("choices") or [{}])[0] if isinstance(chunk, dict) else {}
            if choice.get("finish_reason"):
                state["finish"] = choice["finish_reason"]
            usage = chunk.get("usage") if isinstance(chunk, dict) else None
            if usage:
                state["prompt_tokens"] = usage.get("prompt_tokens", 0)
                state["new"] = usage.get("completion_tokens", state["new"])
            stop = False
            for token in (choice.get("logprobs") or {}).get("content") or []:
                ids.append(token["id"])
                if token["token"]:  # special tokens (end of generation) are part of the sequence but not text,
                    pieces.append(token["token"])  # and a slice must not end on one
                    state["new"] += 1
                    stop = on_token(token["token"]) or stop
            if stop and not constrained:
                state["stopped"] = True
                return True
            return False

        try:
            self._server.handle_completions(body, on_chunk)
        except Exception as exc:
            raise BackendError(f"generation failed: {exc}") from exc
        if state["error"] is not None:
            raise BackendError(f"generation failed: {state['error']}")
        text = "".join(pieces)
        if state["stopped"]:
            # llama.cpp counts the prompt in its last chunk only, which a generation stopped midway never gets: a
            # first slice says it (the scheduler keeps the first count it is given)
            prompt_tokens = state["prompt_tokens"] or (0 if resume else self._count(prompt))
            kv = f"{uuid.uuid4().hex}.bin"
            self._post(f"/slots/{slot}?action=save", {"filename": kv})
            done = (resume.tokens if resume else 0) + state["new"]
            snapshot = Snapshot(text, done, {"ids": list(ids), "kv": kv, "dir": str(self._state_dir)})
            return Result(text, "suspended", prompt_tokens, state["new"], snapshot)
        return Result(text, state["finish"], state["prompt_tokens"], state["new"])

    def _restore(self, slot: int, kv: str) -> None:
        """Load a saved KV cache into `slot` and delete its file; without the file the prefix is recomputed."""
        path = self._state_dir / kv
        if path.is_file():
            self._post(f"/slots/{slot}?action=restore", {"filename": kv})
            path.unlink(missing_ok=True)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{self._address}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except OSError as exc:
            raise BackendError(f"the embedded server refused {path}: {exc}") from exc


def discard(state: Any) -> bool:
    """Delete the KV file that a snapshot's `state` from this backend names (in the folder of the process that
    saved it), if it is still there; whether it was. Only a file named as this backend names them is deleted."""
    if not isinstance(state, dict) or not isinstance(state.get("dir"), str) or not isinstance(state.get("kv"), str):
        return False
    if not re.fullmatch(r"[0-9a-f]{32}\.bin", state["kv"]):
        return False
    try:
        (Path(state["dir"]) / state["kv"]).unlink()
    except OSError:  # gone already (restored, or its folder was cleaned)
        return False
    return True
