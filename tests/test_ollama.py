"""The ollama backend against a local fake speaking /api/chat, and `auto` backend selection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from engine.kernel.scheduler import Policy, Scheduler
from engine.kernel.syscall import Syscall, SyscallKind
from engine.llm.auto import ollama_answers, open_backend, pick_kind
from engine.llm.base import BackendError, Request, bounded
from engine.llm.ollama import OllamaBackend, host
from tests.fake_ollama import FakeOllama

ANSWER = "The quick brown fox jumps over the lazy dog near the river bank"


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    server = FakeOllama({"fox": ANSWER, "dies": ANSWER})
    yield server
    server.close()


def generate(backend: OllamaBackend, request: Request, stop_after: int | None = None, resume=None):
    seen: list[str] = []

    def on_token(token: str) -> bool:
        seen.append(token)
        return stop_after is not None and len(seen) >= stop_after

    return asyncio.run(backend.generate(request, on_token, resume)), seen


def ask(**extra) -> Request:
    return Request([{"role": "user", "content": "say the sentence"}], **extra)


def test_streams_tokens_and_sends_options_and_format(fake: FakeOllama) -> None:
    backend = OllamaBackend("fox", server=fake.url)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    result, seen = generate(backend, ask(schema=schema, options={"temperature": 0, "seed": 3, "max_tokens": 50,
                                                                 "num_ctx": 4096}))
    assert result.text == ANSWER and "".join(seen) == ANSWER
    assert (result.finish, result.prompt_tokens, result.completion_tokens) == ("stop", 7, len(seen))
    sent = fake.requests[-1]
    assert sent["format"] == bounded(schema) and sent["stream"] is True
    assert sent["options"] == {"temperature": 0, "seed": 3, "num_predict": 50, "num_ctx": 4096}
    generate(backend, ask())
    assert fake.requests[-1]["options"]["num_ctx"] == backend.context  # sent even when the request sets none


def test_suspends_and_resumes_by_continuing_the_assistant_message(fake: FakeOllama) -> None:
    backend = OllamaBackend("fox", server=fake.url)
    first, _ = generate(backend, ask(), stop_after=3)
    assert (first.finish, first.text, first.snapshot.tokens) == ("suspended", "The quick brown", 3)
    second, _ = generate(backend, ask(), resume=first.snapshot)
    assert second.text == ANSWER and second.finish == "stop"
    assert fake.requests[-1]["messages"][-1] == {"role": "assistant", "content": "The quick brown"}


def test_max_tokens_is_num_predict_across_a_resume(fake: FakeOllama) -> None:
    backend = OllamaBackend("fox", server=fake.url)
    first, _ = generate(backend, ask(options={"max_tokens": 5}), stop_after=2)
    second, _ = generate(backend, ask(options={"max_tokens": 5}), resume=first.snapshot)
    assert fake.requests[-1]["options"]["num_predict"] == 3
    assert (second.text, second.finish) == ("The quick brown fox jumps", "length")


def test_round_robin_through_the_scheduler(fake: FakeOllama) -> None:
    backend = OllamaBackend("fox", server=fake.url)
    scheduler = Scheduler(backend, Policy.RR, slice_tokens=4)
    calls = [Syscall(SyscallKind.GENERATE, "agent", f"run{i}", ask()) for i in range(3)]

    async def main() -> list:
        return await asyncio.gather(*(scheduler.submit(c) for c in calls))

    assert [r.text for r in asyncio.run(main())] == [ANSWER] * 3
    assert all(c.preemptions >= 2 for c in calls)


@pytest.mark.parametrize(("model", "message"), [
    ("missing", "run `ollama pull missing`"),
    ("broken", "answered 500: boom"),
    ("dies", "Ollama server at"),
])
def test_server_errors_are_clear(fake: FakeOllama, model: str, message: str) -> None:
    with pytest.raises(BackendError, match=message.replace("(", r"\(")):
        generate(OllamaBackend(model, server=fake.url), ask())


def test_an_unreachable_server_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(BackendError, match="no Ollama server answers"):
        generate(OllamaBackend("fox", server=closed), ask())
    assert not ollama_answers(closed)


def test_grammars_are_refused(fake: FakeOllama) -> None:
    with pytest.raises(BackendError, match="JSON schema"):
        generate(OllamaBackend("fox", server=fake.url), ask(grammar='root ::= "a"'))


def test_auto_picks_ollama_when_it_answers(fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", fake.url.removeprefix("http://"))
    assert host() == fake.url
    said: list[str] = []
    backend = open_backend("auto", "smollm2-135m", say=said.append)
    assert isinstance(backend, OllamaBackend) and backend.model == "smollm2:135m" and backend.server == fake.url
    assert said == [f"using the Ollama server at {fake.url}"]


def test_auto_falls_back_to_the_embedded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{probe.getsockname()[1]}")
    kind, why = pick_kind("auto")
    assert kind == "embedded" and why.startswith("no Ollama server at")
    assert pick_kind("embedded")[0] == "embedded"
