"""The scheduler on the scripted backend: exact orders, interleavings, slot limits, aging, metrics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from engine.kernel.scheduler import Policy, Scheduler
from engine.kernel.syscall import Syscall, SyscallKind
from engine.llm.base import OnToken, Request, Result, Snapshot
from engine.llm.scripted import ScriptedBackend, tokenize


@dataclass
class Recorder:
    """Wraps a backend: which request emitted each token, and the most generations running at once."""

    inner: ScriptedBackend
    trace: list[str] = field(default_factory=list)
    active: int = 0
    peak: int = 0
    name: str = "recorder"

    @property
    def slots(self) -> int:
        return self.inner.slots

    async def generate(self, request: Request, on_token: OnToken, resume: Snapshot | None = None) -> Result:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await self.inner.generate(request, lambda t: self.trace.append(request.key) or on_token(t), resume)
        finally:
            self.active -= 1


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def backend(texts: dict[str, str], slots: int = 1) -> Recorder:
    return Recorder(ScriptedBackend.from_responses([{"key": k, "text": t} for k, t in texts.items()], slots=slots))


def call(key: str, priority: int = 0) -> Syscall:
    request = Request([{"role": "user", "content": f"request {key}"}], key=key)
    return Syscall(SyscallKind.GENERATE, agent=f"agent-{key}", run=f"run-{key}", request=request, priority=priority)


async def run_all(scheduler: Scheduler, calls: list[Syscall]) -> list[Result]:
    return await asyncio.gather(*(scheduler.submit(c) for c in calls))


def test_fifo_runs_each_to_the_end_in_order_of_arrival() -> None:
    texts = {"a": words(5, "a"), "b": words(4, "b"), "c": words(3, "c")}
    recorder = backend(texts)
    calls = [call("a"), call("b"), call("c")]
    results = asyncio.run(run_all(Scheduler(recorder, Policy.FIFO), calls))
    assert recorder.trace == ["a"] * 5 + ["b"] * 4 + ["c"] * 3
    assert [r.text for r in results] == list(texts.values())
    assert calls[0].started <= calls[1].started <= calls[2].started
    assert calls[0].finished <= calls[1].started and calls[1].finished <= calls[2].started
    assert all(c.preemptions == 0 for c in calls)


def test_round_robin_interleaves_slices_and_every_output_is_whole() -> None:
    texts = {"a": words(7, "a"), "b": words(5, "b"), "c": words(9, "c")}
    recorder = backend(texts)
    scheduler = Scheduler(recorder, Policy.RR, slice_tokens=3)
    calls = [call("a"), call("b"), call("c")]
    results = asyncio.run(run_all(scheduler, calls))
    assert "".join(recorder.trace) == "aaabbbcccaaabbcccaccc"
    assert [r.text for r in results] == list(texts.values())  # resumed text is the uninterrupted text
    assert [c.preemptions for c in calls] == [2, 1, 2]
    assert [c.tokens for c in calls] == [7, 5, 9]
    assert len(scheduler.context) == 0  # every snapshot was handed back


def test_round_robin_does_not_preempt_when_nobody_waits() -> None:
    recorder = backend({"a": words(10, "a")})
    (only,) = [call("a")]
    asyncio.run(run_all(Scheduler(recorder, Policy.RR, slice_tokens=2), [only]))
    assert only.preemptions == 0 and only.tokens == 10


@pytest.mark.parametrize("slots", [1, 2, 4])
def test_slot_limit_is_never_exceeded_and_is_used(slots: int) -> None:
    texts = {f"r{i}": words(4, f"r{i}-") for i in range(10)}
    for policy in Policy:
        recorder = backend(texts, slots=slots)
        results = asyncio.run(run_all(Scheduler(recorder, policy, slice_tokens=2), [call(k) for k in texts]))
        assert recorder.peak == slots, policy
        assert [r.text for r in results] == list(texts.values())


def _starvation_run(aging: int) -> list[str]:
    """One slot, a low-priority request, and high-priority ones that keep coming; the order they finish in."""
    texts = {"first": "x", "low": "y"} | {f"h{i}": "z" for i in range(30)}
    scheduler = Scheduler(backend(texts), Policy.PRIORITY, aging=aging)
    finished: list[str] = []

    async def one(key: str, priority: int) -> None:
        await scheduler.submit(call(key, priority))
        finished.append(key)

    async def main() -> None:
        tasks = [asyncio.create_task(one("first", 5))]
        await asyncio.sleep(0)  # "first" holds the slot; now the low one queues behind a steady stream
        tasks.append(asyncio.create_task(one("low", 0)))
        for i in range(30):
            tasks.append(asyncio.create_task(one(f"h{i}", 5)))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return finished


def test_priority_with_aging_lets_the_low_priority_request_finish_amid_a_stream() -> None:
    with_aging = _starvation_run(aging=1)
    without = _starvation_run(aging=0)
    assert without[-1] == "low"  # without aging it waits for the whole stream
    # With aging it gets its turn amid the stream: every request passed over ages, so it needs about
    # (priority gap / aging) picks more than the oldest high-priority request still waiting.
    assert with_aging.index("low") < len(with_aging) // 2
    assert with_aging[0] == "first" and len(with_aging) == 32


def test_metrics_are_recorded_for_every_syscall() -> None:
    texts = {f"m{i}": words(3 + i, "m") for i in range(5)}
    calls = [call(k) for k in texts]
    asyncio.run(run_all(Scheduler(backend(texts, slots=2), Policy.RR, slice_tokens=2), calls))
    for c, text in zip(calls, texts.values(), strict=True):
        assert c.created <= c.started <= c.finished
        assert 0 <= c.waiting <= c.turnaround
        assert c.tokens == len(tokenize(text))
        assert c.result is not None and c.result.text == text
        assert c.input_tokens == 2  # "request mN"
        assert c.slices[0][0] < c.first_token <= c.slices[0][1]  # within its first time on the model


@dataclass
class CountsWhenDone:
    """A backend that says how long the prompt was only at a generation's end, of the prompt it was sent: Ollama's
    way (its last chunk counts the prompt), where a resumed generation's prompt ends with the text so far."""

    inner: ScriptedBackend
    name: str = "counts-when-done"

    @property
    def slots(self) -> int:
        return self.inner.slots

    async def generate(self, request: Request, on_token: OnToken, resume: Snapshot | None = None) -> Result:
        result = await self.inner.generate(request, on_token, resume)
        if result.finish == "suspended":
            result.prompt_tokens = 0
        return result


def test_a_preempted_call_counts_the_prompt_it_was_asked_not_the_text_it_resumed_with() -> None:
    texts = {"a": words(9, "a"), "b": words(9, "b")}
    model = CountsWhenDone(ScriptedBackend.from_responses([{"key": k, "text": t} for k, t in texts.items()]))
    calls = [call(k) for k in texts]
    asyncio.run(run_all(Scheduler(model, Policy.RR, slice_tokens=2), calls))  # type: ignore[arg-type]
    assert all(c.preemptions >= 3 and c.input_tokens == 2 for c in calls)


def test_a_failing_generation_fails_its_caller_only() -> None:
    recorder = backend({"ok": "fine"})  # no answer for "missing": the cassette raises
    scheduler = Scheduler(recorder)

    async def main() -> tuple[object, object]:
        return tuple(await asyncio.gather(scheduler.submit(call("missing")), scheduler.submit(call("ok")),
                                          return_exceptions=True))

    failed, ok = asyncio.run(main())
    assert isinstance(failed, Exception) and "no answer" in str(failed)
    assert isinstance(ok, Result) and ok.text == "fine"
    assert scheduler.running == 0 and scheduler.waiting == 0


def test_a_queued_call_whose_caller_is_cancelled_is_never_generated() -> None:
    """A run stopped (a fail-fast map cancelling its other items) leaves nothing of its own on the model."""
    backend = Recorder(ScriptedBackend.from_responses([{"key": k, "text": words(5, k)} for k in "abc"],
                                                      token_delay=0.01))
    scheduler = Scheduler(backend, Policy.FIFO)

    async def main() -> None:
        calls = [asyncio.ensure_future(scheduler.submit(Syscall(SyscallKind.GENERATE, "agent", f"run-{key}",
                                                                Request([], key=key)))) for key in "abc"]
        await asyncio.sleep(0.02)  # a is on the model, b and c wait
        calls[1].cancel()
        calls[2].cancel()
        await calls[0]
        await asyncio.sleep(0.1)
        assert scheduler.waiting == 0 and scheduler.running == 0

    asyncio.run(main())
    assert set(backend.trace) == {"a"}


def test_a_call_resumed_from_a_stored_snapshot_counts_the_prompt_it_was_asked() -> None:
    """A run resumed in a new process goes on with its generation's snapshot: its first slice here is a resumed
    one, whose prompt ends with the text so far."""
    text = words(9, "a")
    scheduler = Scheduler(ScriptedBackend.from_responses([{"key": "a", "text": text}]), Policy.FIFO)
    resumed = call("a")
    scheduler.context.suspend(resumed, Snapshot("".join(tokenize(text)[:5]), 5, text), store=False)
    asyncio.run(scheduler.submit(resumed))
    assert resumed.input_tokens == 2 and resumed.result is not None and resumed.result.text == text
