"""Model slots leased through the database that every worker shares (table model_slots), for engine.llm.pool: a
host's slots are rows, free or held by one generation until a time its process renews while it generates. A slot
is taken by an update that only succeeds on a row still free (or whose lease ran out: its holder died), so two
generations never hold one slot, on PostgreSQL or SQLite alike; the least-loaded host is the one with the fewest
slots held. Times are the database's clock (machines' clocks differ); a generation whose lease could not be
renewed stops (ModelUnavailable: the kernel tries it again), since another one may take its slot once it ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence

from sqlalchemy import Connection, delete, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from engine.kernel.storage import Storage
from engine.kernel.tables import ModelSlotRow
from engine.llm.base import ModelUnavailable
from engine.llm.pool import Host

_SLOTS = ModelSlotRow.__table__  # type: ignore[attr-defined]
WAIT = (0.01, 0.2)  # seconds between looks for a free slot: the first, and at most (doubling, with jitter)


class SlotLeases:
    """The slots of `hosts` in `storage`'s database, held for `lease` seconds at a time and renewed."""

    def __init__(self, storage: Storage, hosts: Sequence[Host], *, lease: float = 30.0) -> None:
        self.engine, self.lease = storage.engine, lease
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        with self.engine.begin() as db:  # the hosts file is the truth: slots it no longer lists go once free
            insert = postgresql_insert if db.dialect.name == "postgresql" else sqlite_insert
            for host in hosts:
                # workers starting at once insert the same rows: the first one's stand
                db.execute(insert(_SLOTS).on_conflict_do_nothing(),
                           [{"host": host.url, "slot": n} for n in range(host.slots)])
                db.execute(delete(_SLOTS).where(_SLOTS.c.host == host.url, _SLOTS.c.slot >= host.slots,
                                                _SLOTS.c.holder.is_(None)))

    @contextlib.asynccontextmanager
    async def hold(self, hosts: Callable[[], Sequence[Host]]) -> AsyncIterator[str]:
        """Wait for a slot of the least-loaded of the hosts `hosts()` gives (asked at each look, so a host that
        failed meanwhile is left out) with one free, and hold it in the block, renewed; a lease that could not be
        renewed stops the block with ModelUnavailable."""
        holder = f"{self.process}:{uuid.uuid4().hex[:12]}"  # this generation's: a release frees its own slot only
        wait = WAIT[0]
        while (taken := await self._take(holder, [host.url for host in hosts()])) is None:
            await asyncio.sleep(random.uniform(wait / 2, wait))
            wait = min(wait * 2, WAIT[1])
        lost = asyncio.Event()
        holding = asyncio.current_task()
        renewing = asyncio.ensure_future(self._renew(holder, *taken, lost, holding))
        try:
            yield taken[0]
        except asyncio.CancelledError:
            if lost.is_set() and holding is not None and holding.uncancel() == 0:  # our own cancel, not a caller's
                raise ModelUnavailable(f"the lease of a slot of {taken[0]} could not be renewed: another "
                                       "generation may have it now") from None
            raise
        finally:
            renewing.cancel()
            await asyncio.shield(asyncio.to_thread(self._release, holder, *taken))

    async def _take(self, holder: str, urls: list[str]) -> tuple[str, int] | None:
        """A slot taken for `holder`, or None; one taken while this call was cancelled is given back."""
        taking = asyncio.ensure_future(asyncio.to_thread(self._take_now, holder, urls))
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            taken = await taking
            if taken is not None:
                await asyncio.to_thread(self._release, holder, *taken)
            raise

    def _take_now(self, holder: str, urls: list[str]) -> tuple[str, int] | None:
        with self.engine.begin() as db:
            now = _now(db)
            rows = db.execute(select(_SLOTS.c.host, _SLOTS.c.slot, _SLOTS.c.holder, _SLOTS.c.expires)
                              .where(_SLOTS.c.host.in_(urls))).all()
            held = Counter(row.host for row in rows if row.holder is not None and row.expires > now)
            free = sorted((held[row.host], urls.index(row.host), row.slot, row.host) for row in rows
                          if row.holder is None or row.expires <= now)
            for _, _, slot, host in free[:3]:  # another process may take the first between the read and the write
                taken = db.execute(update(_SLOTS).where(
                    _SLOTS.c.host == host, _SLOTS.c.slot == slot,
                    or_(_SLOTS.c.holder.is_(None), _SLOTS.c.expires <= now)).values(
                    holder=holder, expires=now + self.lease))
                if taken.rowcount == 1:
                    return host, slot
        return None

    async def _renew(self, holder: str, host: str, slot: int, lost: asyncio.Event,
                     holding: asyncio.Task[object] | None) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                kept = await asyncio.to_thread(self._extend, holder, host, slot)
            except Exception:  # the database away: the lease may run out before the next try
                kept = False
            if not kept:
                lost.set()
                if holding is not None:
                    holding.cancel()
                return

    def _extend(self, holder: str, host: str, slot: int) -> bool:
        with self.engine.begin() as db:
            return db.execute(update(_SLOTS).where(_SLOTS.c.host == host, _SLOTS.c.slot == slot,
                                                   _SLOTS.c.holder == holder)
                              .values(expires=_now(db) + self.lease)).rowcount == 1

    def _release(self, holder: str, host: str, slot: int) -> None:
        try:
            with self.engine.begin() as db:
                db.execute(update(_SLOTS).where(_SLOTS.c.host == host, _SLOTS.c.slot == slot,
                                                _SLOTS.c.holder == holder).values(holder=None, expires=None))
        except Exception as exc:  # the lease runs out by itself: what the slot served stands
            print(f"flowrun: a slot of {host} was not given back ({exc}); it is free once its lease runs out",
                  file=sys.stderr)


def _now(db: Connection) -> float:
    """The database's time, in seconds since the epoch: the one clock every worker shares."""
    if db.dialect.name == "postgresql":
        return float(db.execute(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")).scalar_one())
    return time.time()  # SQLite is one machine's
