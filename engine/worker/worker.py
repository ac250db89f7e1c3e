"""`flowrun worker`: one process with one kernel, taking queued runs (engine.worker.queue) from the job queue
and running them on a Service, any number of them on any number of machines sharing one PostgreSQL database.

A run is started or resumed through the same code as `flowrun runs resume`, from its last committed step, and
fenced (engine.kernel.fencing): claimed with a new epoch, written only while that epoch holds. Procrastinate keeps
each worker's heartbeat; every worker looks for the jobs of workers whose heartbeat is older than `stall` seconds
(killed, frozen, cut off), ends them and queues their runs again, so that they go on elsewhere; and for runs of the
queue that have no job left (a process stopped between storing a run and queueing its job), which it queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text

from engine.errors import RunStatus
from engine.interpreter.resume import ClaimedElsewhere, ResumeError, Stopped
from engine.kernel.storage import NoSuchRun, Storage
from engine.kernel.tables import of_queue
from engine.server.catalog import Offered
from engine.service import AlreadyInFlight, Service
from engine.worker.queue import QUEUE, TASK, app_for, defer, ready

log = logging.getLogger("flowrun.worker")


class ModelAway(Exception):
    """A run paused on a worker, its model unavailable: its job is tried again later."""
# tries of a job whose run could not be read or claimed (the database away), or paused (its model away): 5, 10,
# 15... s apart, 3.75 minutes in all; then a person resumes it
RETRIES = 10


async def work(service: Service, catalog: dict[str, Offered], *, concurrency: int, stall: float,
               name: str) -> None:
    """Take queued runs of the flows in `catalog` (by name), `concurrency` at a time, until cancelled; take over
    the runs of workers whose heartbeat is `stall` seconds old."""
    from procrastinate import RetryStrategy

    storage = service.kernel.storage
    storage.end_idle_transactions(stall)  # frozen midway through a write, this worker holds no one up for long
    app = app_for(storage)
    asyncio.get_running_loop().set_exception_handler(_quiet_queue)
    async with app.open_async():
        await ready(app)

        @app.task(name=TASK, queue=QUEUE, pass_context=True,
                  retry=RetryStrategy(max_attempts=RETRIES, linear_wait=5, retry_exceptions={Exception}))
        async def take(context: Any, run_id: str) -> None:
            try:
                ended = await run(service, catalog, run_id,
                                  live=lambda: _held_elsewhere(storage, run_id, context.job.id, stall))
            except asyncio.CancelledError:  # this worker stops: the run (stored interrupted) goes on elsewhere
                with contextlib.suppress(Exception):
                    await asyncio.shield(defer(app, [run_id]))
                raise
            if ended == RunStatus.PAUSED:  # the model stayed away: the job is tried again later (RETRIES)
                raise ModelAway(f"run {run_id} paused: its model stayed unavailable")

        sweeping = asyncio.ensure_future(sweep(app, storage, stall))
        try:
            await app.run_worker_async(queues=[QUEUE], concurrency=concurrency, name=name,
                                       update_heartbeat_interval=stall / 4, stalled_worker_timeout=stall,
                                       fetch_job_polling_interval=min(5.0, stall / 2),
                                       shutdown_graceful_timeout=0.1,  # its runs stop (stored interrupted) at once
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


async def run(service: Service, catalog: dict[str, Offered], run_id: str,
              live: Callable[[], Awaitable[bool]] | None = None) -> RunStatus | None:
    """Start or go on with the queued, stopped or stalled run `run_id`, to its end here; how it ended (None: it
    was not this worker's to run: ended already, another worker's, or its own already). `live`, awaited, says
    whether a live worker other than this one holds the run (then it is that one's)."""
    if service.running(run_id) == run_id:  # a job of a run this worker runs, queued again while it stalled
        return None
    try:
        found = await service.stopped(run_id, worker=True)
    except (ResumeError, NoSuchRun) as exc:  # ended already (its job done twice), waiting for a person, deleted
        log.info("run %s: %s", run_id, exc)
        return None
    if not of_queue(found.run):  # a person resumed or cancelled it: not the queue's any more
        return None
    if found.run.status == RunStatus.RUNNING and live is not None and await live():
        return None
    offered = catalog.get(found.run.agent)
    if offered is None:
        return await _give_up(service, found, RunStatus.FAILED, f"no worker offers flow {found.run.agent!r}: start "
                              "workers with --flows naming a directory that holds it, then resume the run")
    mine = True  # whether the run's fence, if any, is this take's to drop at its end
    try:  # cancelled (the worker stops), the run is stored interrupted first
        outcome = await service.to_end(service.resume(offered.checked, found, file=str(offered.path), fence=True))
    except AlreadyInFlight:  # this worker took it meanwhile, on another job: that one's fence stands
        mine = False
        return None
    except ClaimedElsewhere:  # by another worker, first
        return None
    except ResumeError as exc:
        return await _give_up(service, found, RunStatus.INTERRUPTED, str(exc))  # a person decides
    finally:
        if mine:
            service.kernel.storage.fences.release(run_id)
    if outcome.status == RunStatus.LOST:
        print(f"flowrun worker: run {run_id} was taken from this worker (another one took it over, or a person "
              "cancelled or resumed it): this one stopped it, storing nothing more of it", file=sys.stderr)
    return outcome.status


async def _held_elsewhere(storage: Storage, run_id: str, job: int, stall: float) -> bool:
    """Whether a job of run `run_id` other than `job` is being done by a worker whose heartbeat is fresh."""
    def read() -> bool:
        with storage.engine.connect() as db:
            return db.execute(text(
                "SELECT 1 FROM procrastinate_jobs j JOIN procrastinate_workers w ON w.id = j.worker_id "
                "WHERE j.args->>'run_id' = :run AND j.status = 'doing' AND j.id <> :job "
                "AND w.last_heartbeat > NOW() - make_interval(secs => :stall)"),
                {"run": run_id, "job": job, "stall": stall}).first() is not None
    return await asyncio.to_thread(read)


async def _give_up(service: Service, found: Stopped, status: RunStatus, why: str) -> RunStatus | None:
    """Store run `found` as `status` with `why`, out of the queue (claimed as a person would, not as a worker),
    where this worker could not run it (a person resumes it)."""
    if not await service.take_out(found.run, status, why):
        return None
    print(f"flowrun worker: run {found.run.id} {status}: {why}", file=sys.stderr)
    return status


async def sweep(app: Any, storage: Storage, stall: float) -> None:
    """Every half `stall`: end the jobs of workers whose heartbeat is `stall` seconds old as failed, and queue
    their runs again in new jobs (a stalled worker that comes back finds its job ended, not one another worker
    took on; its runs it finds taken over: engine.kernel.fencing); and queue the runs of the queue, older than
    `stall`, that are queued, running or interrupted with no job to do them (a process stopped between the two)."""
    while True:
        await asyncio.sleep(stall / 2)
        try:
            await _sweep_once(app, storage, stall)
        except Exception as exc:  # the database away, say: the next look may find it
            log.warning("looking for stalled jobs failed: %s", exc)


async def _sweep_once(app: Any, storage: Storage, stall: float) -> None:
    from procrastinate.exceptions import ConnectorException
    from procrastinate.jobs import Status

    for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=stall, queue=QUEUE):
        try:
            await app.job_manager.finish_job(job, Status.FAILED, delete_job=False)
        except ConnectorException:  # another worker ended it first, and queues its run
            continue
        await defer(app, [job.task_kwargs["run_id"]])
        log.info("run %s of a stalled worker is queued again", job.task_kwargs["run_id"])

    def orphans() -> list[tuple[str, bool]]:
        """Each run of the queue left with no job, and whether it started once (a process claimed it)."""
        with storage.engine.connect() as db:
            return [(run, started) for run, started in db.execute(text(
                "SELECT r.id, r.pid IS NOT NULL FROM runs r WHERE r.epoch >= 0 AND r.parent IS NULL "
                "AND r.status IN ('queued', 'running', 'interrupted') "
                "AND r.created < EXTRACT(EPOCH FROM NOW()) - :stall AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j "
                "WHERE j.args->>'run_id' = r.id AND j.status IN ('todo', 'doing'))"), {"stall": stall})]

    left = await asyncio.to_thread(orphans)
    for again in (True, False):  # one that never started waits its turn behind the others not started
        runs = [run for run, started in left if started == again]
        if runs:
            await defer(app, runs, again=again)
            log.info("runs of the queue with no job, queued again: %s", ", ".join(runs))
