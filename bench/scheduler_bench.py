"""How well the kernel shares a model: makespan against the ideal, an AIOS-style baseline, and kernel overhead.

1. 64 agents each make 10 LLM calls one after another on a simulated backend with k slots (1, 4, 8) where every
   call takes 50 ms. Ideal makespan: ceil(64*10/k) * 50 ms (goal: within 5%). The same work under an AIOS-style
   scheduler (a loop that wakes once a second and starts the FIFO batch queued since) is run for contrast.
2. Tokens per second of the embedded model (SmolLM2-135M) through the kernel against the same model called
   directly, both measured in this run (goal: >= 95%). Skipped with --no-model.

    python bench/scheduler_bench.py [--agents 64] [--calls 10] [--seconds 0.05] [--no-model]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from dataclasses import dataclass

from engine.kernel.kernel import Kernel
from engine.kernel.scheduler import Policy
from engine.kernel.storage import Storage
from engine.llm.base import OnToken, Request, Result, Snapshot


@dataclass
class Simulated:
    """A backend whose every call takes `seconds`, with `slots` parallel generations."""

    slots: int
    seconds: float
    name: str = "simulated"
    context: int = 4096

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(messages)

    async def generate(self, request: Request, on_token: OnToken, resume: Snapshot | None = None) -> Result:
        await asyncio.sleep(self.seconds)
        on_token("done")
        return Result("done", "stop", 1, 1)


async def kernel_makespan(agents: int, calls: int, slots: int, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        kernel = Kernel(Simulated(slots, seconds), Storage(f"sqlite:///{tmp}/bench.db"), policy=Policy.FIFO)

        async def agent(n: int) -> None:
            for i in range(calls):
                await kernel.generate(f"agent{n}", f"run{n}", Request([{"role": "user", "content": str(i)}]))

        start = time.perf_counter()
        await asyncio.gather(*(agent(n) for n in range(agents)))
        return time.perf_counter() - start


async def aios_makespan(agents: int, calls: int, slots: int, seconds: float, tick: float = 1.0) -> float:
    """AIOS's FIFO scheduler, as it works: a polling loop that starts the queued batch once per `tick`."""
    queue: list[asyncio.Future[None]] = []
    backend = Simulated(slots, seconds)
    limit = asyncio.Semaphore(slots)

    async def serve(done: asyncio.Future[None]) -> None:
        async with limit:
            await backend.generate(Request([]), lambda _: False)
        done.set_result(None)

    running: set[asyncio.Task[None]] = set()

    async def scheduler(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(tick)
            batch, queue[:] = list(queue), []
            for done in batch:
                task = asyncio.ensure_future(serve(done))
                running.add(task)
                task.add_done_callback(running.discard)

    async def agent() -> None:
        for _ in range(calls):
            done = asyncio.get_running_loop().create_future()
            queue.append(done)
            await done

    stop = asyncio.Event()
    loop_task = asyncio.create_task(scheduler(stop))
    start = time.perf_counter()
    await asyncio.gather(*(agent() for _ in range(agents)))
    elapsed = time.perf_counter() - start
    stop.set()
    await loop_task
    return elapsed


def model_throughput(tokens: int = 128) -> tuple[float, float]:
    """Tokens per second of the embedded model called directly, and through the kernel (best of 3 each)."""
    from engine.llm import models
    from engine.llm.embedded import EmbeddedBackend

    backend = EmbeddedBackend(models.resolve(models.DEFAULT_MODEL), context=2048)
    request = Request([{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}],
                      options={"temperature": 0, "top_k": 1, "max_tokens": tokens})

    def direct() -> float:
        start = time.perf_counter()
        result = asyncio.run(backend.generate(request, lambda _: False))
        return result.completion_tokens / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        kernel = Kernel(backend, Storage(f"sqlite:///{tmp}/bench.db"))

        def through_kernel() -> float:
            start = time.perf_counter()
            result = asyncio.run(kernel.generate("agent", "run", request))
            return result.completion_tokens / (time.perf_counter() - start)

        direct()  # warm-up
        pairs = [(direct(), through_kernel()) for _ in range(3)]
    return max(p[0] for p in pairs), max(p[1] for p in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=0.05)
    parser.add_argument("--slots", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--no-model", action="store_true", help="skip the embedded-model throughput figure")
    args = parser.parse_args()
    work = args.agents * args.calls
    print(f"{args.agents} agents x {args.calls} calls of {args.seconds * 1000:.0f} ms")
    for slots in args.slots:
        ideal = math.ceil(work / slots) * args.seconds
        ours = asyncio.run(kernel_makespan(args.agents, args.calls, slots, args.seconds))
        aios = asyncio.run(aios_makespan(args.agents, args.calls, slots, args.seconds))
        print(f"  k={slots}: ideal {ideal:6.2f} s | flowrun {ours:6.2f} s ({ours / ideal:5.3f}x ideal, goal <= 1.05)"
              f" | AIOS-style 1 s FIFO batches {aios:6.2f} s ({aios / ideal:5.2f}x ideal)")
    if not args.no_model:
        direct, kernel = model_throughput()
        print(f"embedded model: direct {direct:.1f} tok/s, through the kernel {kernel:.1f} tok/s "
              f"({kernel / direct:.1%} of direct, goal >= 95%)")


if __name__ == "__main__":
    main()
