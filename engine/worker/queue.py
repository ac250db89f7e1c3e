"""The queue of runs for workers: Procrastinate's job queue in the run database (PostgreSQL), one job per run.

A queued run is stored first, with status `queued`, its flow file, the flow's sha256 and its inputs; then a job
naming it is deferred. The run's row, not the job, is the truth: a worker that takes the job claims the run (its
epoch bumped, engine.kernel.fencing) and starts or resumes it from its last committed step, so a job run twice
(a worker that stalled and came back) does a run's work once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from engine.errors import FlowrunError, RunStatus
from engine.flow.validate import CheckedFlow
from engine.interpreter.walk import new_run_id
from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow

TASK = "flowrun.run"  # the job of a run: its argument is the run's id
QUEUE = "flowrun"
_SCHEMA_LOCK = 0x466C6F78  # the advisory lock held while the queue's tables are made


class QueueError(FlowrunError):
    """The job queue cannot be used as asked; the message says why and what to do."""


def conninfo(storage: Storage) -> str:
    """The libpq connection string of the PostgreSQL database `storage` uses (a QueueError for any other)."""
    url = storage.engine.url
    if url.get_backend_name() != "postgresql":
        raise QueueError(f"workers share runs through PostgreSQL, and {storage.url} is not a PostgreSQL database: "
                         "give --db postgresql+psycopg://USER@HOST/DB (pip install 'flowrun[postgres]')")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def app_for(storage: Storage) -> Any:
    """A Procrastinate app on the database `storage` uses (to be opened: `async with app.open_async()`)."""
    try:
        from procrastinate import App, PsycopgConnector
    except ImportError:
        raise QueueError("workers need Procrastinate: pip install 'flowrun[postgres]'") from None
    return App(connector=PsycopgConnector(conninfo=conninfo(storage)))


async def ready(app: Any) -> None:
    """Make the queue's tables if the database has none yet (one process at a time)."""
    async with app.connector.pool.connection() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        found = await (await connection.execute("SELECT to_regclass('procrastinate_jobs')")).fetchone()
        if found[0] is None:
            await connection.execute(app.schema_manager.get_schema())


async def enqueue(storage: Storage, checked: CheckedFlow, runs: list[dict[str, Any]], *, file: str,
                  batch: str | None = None, workspace: Path | None = None, traceparent: str | None = None,
                  app: Any = None) -> list[str]:
    """Store a queued run of the valid flow `checked` (from `file`) for each inputs in `runs` (its tools working in
    `workspace`, in the trace `traceparent` names, if given), and defer its job through `app` (an open app: a
    server's; default: one opened for this); their ids. A run stored whose job was not deferred (the process
    stopped between) is queued by the workers' sweep (engine.worker.worker)."""
    if app is None:
        async with (opened := app_for(storage)).open_async():
            await ready(opened)
            return await enqueue(storage, checked, runs, file=file, batch=batch, workspace=workspace,
                                 traceparent=traceparent, app=opened)
    rows = [RunRow(id=new_run_id(), agent=checked.flow.name, flow=file, status=RunStatus.QUEUED, batch=batch,
                   inputs=inputs, created=time.time(), flow_sha256=checked.compiled.sha256, epoch=0,
                   workspace=None if workspace is None else str(workspace.resolve()), traceparent=traceparent)
            for inputs in runs]
    # awaited together, they are stored a few transactions in all, not one each (500 runs: 0.09 s, not 0.48 s)
    await asyncio.gather(*(storage.commit_start_run(row) for row in rows))
    await defer(app, [row.id for row in rows], again=False)
    return [row.id for row in rows]


async def defer(app: Any, run_ids: list[str], *, again: bool = True) -> None:
    """Defer the jobs of the stored runs `run_ids`, for a worker to take: `again` (runs that went some way already:
    taken over from a worker that died, stopped, answered), ahead of the runs not started, which can wait. Behind
    a long queue, a run taken over waited for the whole queue to start first."""
    if run_ids:  # in one statement (500 jobs: 0.04 s; one by one, 0.49 s, while workers waited for the first)
        await app.configure_task(TASK, queue=QUEUE, priority=int(again)).batch_defer_async(
            *({"run_id": run} for run in run_ids))


async def queue_again(storage: Storage, run_id: str, app: Any = None) -> None:
    """Queue the stopped run `run_id` again for workers (an answered run of the queue, say), through `app` (an open
    app: a server's; default: one opened for this)."""
    if app is None:
        async with (opened := app_for(storage)).open_async():
            await ready(opened)
            return await queue_again(storage, run_id, opened)
    await storage.commit(storage.join_queue, run_id)
    await defer(app, [run_id])
