"""Many runs of one flow at once, sharing the kernel (and so the model, through its scheduler)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from engine.flow.compiler import CompiledFlow
from engine.interpreter.walk import Progress, RunOutcome, run_flow
from engine.kernel.kernel import Kernel


async def run_batch(kernel: Kernel, compiled: CompiledFlow, inputs: Sequence[dict[str, Any]], *, file: str,
                    concurrency: int, progress: Sequence[Progress], batch: str | None = None) -> list[RunOutcome]:
    """Run the flow once per inputs, at most `concurrency` runs at a time, each reporting to its `progress`.

    All runs are stored under batch id `batch` (new if not given); outcomes come back in the order of `inputs`.
    """
    batch = batch or uuid.uuid4().hex
    gate = asyncio.Semaphore(concurrency)

    async def one(given: dict[str, Any], shown: Progress) -> RunOutcome:
        async with gate:
            return await run_flow(kernel, compiled, given, file=file, progress=shown, batch=batch)

    return list(await asyncio.gather(*(one(given, shown) for given, shown in zip(inputs, progress, strict=True))))
