"""Many runs of one flow at once, sharing the kernel (and so the model, through its scheduler)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from engine.flow.compiler import CompiledFlow
from engine.interpreter.walk import RunOutcome, new_run_id, run_flow
from engine.kernel.kernel import Kernel


async def run_batch(kernel: Kernel, compiled: CompiledFlow, inputs: Sequence[dict[str, Any]], *, file: str,
                    concurrency: int, run_ids: Sequence[str] | None = None, batch: str | None = None
                    ) -> list[RunOutcome]:
    """Run the flow once per inputs, at most `concurrency` runs at a time, with the ids `run_ids` (new if not
    given).

    All runs are stored under batch id `batch` (new if not given); outcomes come back in the order of `inputs`.
    """
    run_ids = run_ids or [new_run_id() for _ in inputs]
    batch = batch or uuid.uuid4().hex
    gate = asyncio.Semaphore(concurrency)

    async def one(given: dict[str, Any], run_id: str) -> RunOutcome:
        async with gate:
            return await run_flow(kernel, compiled, given, file=file, run_id=run_id, batch=batch)

    return list(await asyncio.gather(*(one(given, run_id) for given, run_id in zip(inputs, run_ids, strict=True))))
