"""`flowrun worker`: one process with one kernel, taking queued runs (engine.worker.queue) from the job queue
and running them on a Service, any number of them on any number of machines sharing one PostgreSQL database.

A run is started or resumed through the same code as `flowrun runs resume`, from its last committed step, and
fenced (engine.kernel.fencing): claimed with a new epoch, written only while that epoch holds. Procrastinate keeps
each worker's heartbeat; every worker looks for the jobs of workers whose heartbeat is older than `stall` seconds
(killed, frozen, cut off) and queues their runs again, so that they go on elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any

from engine.errors import RunStatus
from engine.interpreter.resume import ResumeError, Stopped
from engine.interpreter.walk import process_id
from engine.server.catalog import Offered
from engine.service import Service
from engine.worker.queue import QUEUE, TASK, app_for, defer, ready

log = logging.getLogger("flowrun.worker")


async def work(service: Service, catalog: dict[str, Offered], *, concurrency: int, stall: float,
               name: str) -> None:
    """Take queued runs of the flows in `catalog` (by name), `concurrency` at a time, until cancelled; take over
    the runs of workers whose heartbeat is `stall` seconds old."""
    app = app_for(service.kernel.storage)
    asyncio.get_running_loop().set_exception_handler(_quiet_queue)
    async with app.open_async():
        await ready(app)

        @app.task(name=TASK, queue=QUEUE)
        async def take(run_id: str) -> None:
            try:
                await run(service, catalog, run_id)
            except asyncio.CancelledError:  # this worker stops: the run (stored interrupted) goes on elsewhere
                with contextlib.suppress(Exception):
                    await asyncio.shield(defer(app, [run_id]))
                raise

        sweeping = asyncio.ensure_future(sweep(app, stall))
        try:
            await app.run_worker_async(queues=[QUEUE], concurrency=concurrency, name=name,
                                       update_heartbeat_interval=stall / 4, stalled_worker_timeout=stall,
                                       fetch_job_polling_interval=min(5.0, stall / 2),
                                       install_signal_handlers=False)
        finally:
            sweeping.cancel()


def _quiet_queue(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """One line, not a traceback, where Procrastinate could not store how a job ended: a job this worker held when
    it stalled or stopped, which was ended and queued again meanwhile (see `sweep`)."""
    from procrastinate.exceptions import ConnectorException

    error = context.get("exception")
    if isinstance(error, ConnectorException):
        print(f"flowrun worker: a job's end was not stored: {error.__cause__ or error}".splitlines()[0],
              file=sys.stderr)
    else:
        loop.default_exception_handler(context)


async def run(service: Service, catalog: dict[str, Offered], run_id: str) -> RunStatus | None:
    """Start or go on with the queued, stopped or stalled run `run_id`, to its end here; how it ended (None: it
    was not this worker's to run: ended already, or claimed by another)."""
    try:
        found = await service.stopped(run_id, stalled=True)
    except ResumeError as exc:  # ended already (its job done twice), or waiting for a person
        log.info("run %s: %s", run_id, exc)
        return None
    offered = catalog.get(found.run.agent)
    if offered is None:
        return await _give_up(service, found, RunStatus.FAILED, f"no worker offers flow {found.run.agent!r}: start "
                              "workers with --flows naming a directory that holds it, then resume the run")
    try:  # cancelled (the worker stops), the run is stored interrupted first
        outcome = await service.to_end(service.resume(offered.checked, found, file=str(offered.path), fence=True))
    except ResumeError as exc:
        if "another process" in str(exc):  # claimed first by another worker
            return None
        return await _give_up(service, found, RunStatus.INTERRUPTED, str(exc))  # a person decides
    finally:
        service.kernel.storage.fences.release(run_id)
    if outcome.status == RunStatus.LOST:
        print(f"flowrun worker: run {run_id} was taken over by another worker: this one stopped it, storing "
              "nothing more of it", file=sys.stderr)
    return outcome.status


async def _give_up(service: Service, found: Stopped, status: RunStatus, why: str) -> RunStatus | None:
    """Store run `found` as `status` with `why`, where this worker could not run it (a person resumes it)."""
    storage, run = service.kernel.storage, found.run
    if await storage.commit(storage.claim_run, run.id, (run.status, run.pid), process_id()) is None:
        return None
    await storage.commit_finish_run(run.id, status, error=why)
    print(f"flowrun worker: run {run.id} {status}: {why}", file=sys.stderr)
    return status


async def sweep(app: Any, stall: float) -> None:
    """Every half `stall`, end the jobs of workers whose heartbeat is `stall` seconds old as failed, and queue
    their runs again in new jobs: a stalled worker that comes back finds its job ended, not one another worker
    took on (its runs it finds taken over: engine.kernel.fencing)."""
    from procrastinate.exceptions import ConnectorException
    from procrastinate.jobs import Status

    while True:
        await asyncio.sleep(stall / 2)
        try:
            stalled = await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=stall, queue=QUEUE)
        except ConnectorException as exc:  # the database is away: the next look may find it
            log.warning("looking for stalled jobs failed: %s", exc)
            continue
        for job in stalled:
            try:
                await app.job_manager.finish_job(job, Status.FAILED, delete_job=False)
            except ConnectorException:  # another worker ended it first, and queues its run
                continue
            await defer(app, [job.task_kwargs["run_id"]])
            log.info("run %s of a stalled worker is queued again", job.task_kwargs["run_id"])
