"""A pool of Ollama hosts behind one backend: each generation goes to the least-loaded host with a free slot, held
through `Leases` (engine.kernel.slots keeps them in the database all workers share, so that no host runs more
generations than its slots whatever the number of workers). A host that fails is left out for `retry_after`
seconds, and the generation goes to another, from the text so far where the host broke off midway; a suspended
generation resumes on whichever host has a slot (Ollama resumes from the text so far, on any host).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from engine.llm.base import ModelUnavailable, OnToken, Request, Result, Snapshot
from engine.llm.ollama import OllamaBackend


@dataclass(frozen=True)
class Host:
    """An Ollama server and the generations it runs at once (its OLLAMA_NUM_PARALLEL)."""

    url: str
    slots: int


class Leases(Protocol):
    """Slots of hosts, held one at a time."""

    def hold(self, hosts: Callable[[], Sequence[Host]]) -> contextlib.AbstractAsyncContextManager[str]:
        """Wait for a slot of the least-loaded of the hosts `hosts()` gives that has one free; hold it in the
        block (the host's url)."""
        ...


class PoolBackend:
    """Model `model` on the Ollama servers `hosts`, whose slots `leases` hands out."""

    name = "ollama"

    def __init__(self, model: str, hosts: Sequence[Host], leases: Leases, *, retry_after: float = 30.0,
                 context: int = 4096) -> None:
        self.hosts, self.leases, self.retry_after, self.context = list(hosts), leases, retry_after, context
        self.slots = sum(host.slots for host in self.hosts)  # at most this many here; the leases bound them all
        self._backends = {host.url: OllamaBackend(model, server=host.url, slots=host.slots, context=context)
                          for host in self.hosts}
        self._down: dict[str, float] = {}  # a host that failed: when it may be tried again

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return next(iter(self._backends.values())).count_tokens(messages)

    def _up(self) -> list[Host]:
        """The hosts that did not fail lately; all of them when every one did (the kernel's backoff paces the
        tries then: a host that failed once is not left out for longer than that)."""
        now = time.monotonic()
        return [host for host in self.hosts if self._down.get(host.url, 0) <= now] or self.hosts

    async def generate(self, request: Request, on_token: OnToken, resume: Snapshot | None = None) -> Result:
        """Generate on a host with a free slot; where its host breaks off midway, go on from the text so far on
        another, each token told once (a structured generation starts again, its tokens told again: its schema
        holds the whole answer)."""
        failed: ModelUnavailable | None = None
        carried = 0  # tokens of this call generated on hosts that then failed, carried on in `resume`
        heard: list[str] = []

        def told(token: str) -> bool:
            heard.append(token)
            return on_token(token)

        for _ in self.hosts:  # each host at most once a call: then the kernel backs off and asks again
            async with self.leases.hold(self._up) as url:
                try:
                    result = await self._backends[url].generate(request, told if request.schema is None else
                                                                on_token, resume)
                except ModelUnavailable as exc:
                    self._down[url] = time.monotonic() + self.retry_after
                    failed = exc
                    if heard:  # as a suspended generation goes on, from its text (Ollama, on any host)
                        resume = Snapshot((resume.text if resume else "") + "".join(heard),
                                          (resume.tokens if resume else 0) + len(heard))
                        carried += len(heard)
                        heard.clear()
                    continue
            # this call's counts: the text carried on was not part of the prompt asked, and was generated
            return replace(result, prompt_tokens=max(result.prompt_tokens - carried, 0),
                           completion_tokens=result.completion_tokens + carried)
        assert failed is not None
        raise failed
