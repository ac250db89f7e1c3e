"""Model slots leased through the database that every worker shares (table model_slots), for engine.llm.pool: a
host's slots are rows, free or held by one process until a time it renews while it generates. A slot is taken by
an update that only succeeds on a row still free (or whose lease ran out: its holder died), so two processes never
hold one slot, on PostgreSQL or SQLite alike; the least-loaded host is the one with the fewest slots held.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from engine.kernel.storage import Storage
from engine.kernel.tables import ModelSlotRow
from engine.llm.pool import Host

_SLOTS = ModelSlotRow.__table__  # type: ignore[attr-defined]
WAIT = (0.01, 0.2)  # seconds between looks for a free slot: the first, and at most (doubling, with jitter)


class SlotLeases:
    """The slots of `hosts` in `storage`'s database, held for `lease` seconds at a time and renewed."""

    def __init__(self, storage: Storage, hosts: Sequence[Host], *, lease: float = 30.0) -> None:
        self.engine, self.lease = storage.engine, lease
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        with self.engine.begin() as db:  # the hosts file is the truth: slots it no longer lists go once free
            for host in hosts:
                insert = postgresql_insert if db.dialect.name == "postgresql" else sqlite_insert
                # workers starting at once insert the same rows: the first one's stand
                db.execute(insert(_SLOTS).on_conflict_do_nothing(),
                           [{"host": host.url, "slot": n} for n in range(host.slots)])
                db.execute(delete(_SLOTS).where(_SLOTS.c.host == host.url, _SLOTS.c.slot >= host.slots,
                                                _SLOTS.c.holder.is_(None)))

    @contextlib.asynccontextmanager
    async def hold(self, hosts: Sequence[Host]) -> AsyncIterator[str]:
        """Wait for a slot of the least-loaded of `hosts` with one free, and hold it (renewed) in the block."""
        wait = WAIT[0]
        while (taken := await asyncio.to_thread(self._take, [host.url for host in hosts])) is None:
            await asyncio.sleep(random.uniform(wait / 2, wait))
            wait = min(wait * 2, WAIT[1])
        renewing = asyncio.ensure_future(self._renew(*taken))
        try:
            yield taken[0]
        finally:
            renewing.cancel()
            await asyncio.shield(asyncio.to_thread(self._release, *taken))

    def _take(self, urls: list[str]) -> tuple[str, int] | None:
        now = time.time()
        with self.engine.begin() as db:
            rows = db.execute(select(_SLOTS.c.host, _SLOTS.c.slot, _SLOTS.c.holder, _SLOTS.c.expires)
                              .where(_SLOTS.c.host.in_(urls))).all()
            held = Counter(row.host for row in rows if row.holder is not None and row.expires > now)
            free = sorted((held[row.host], urls.index(row.host), row.slot, row.host) for row in rows
                          if row.holder is None or row.expires <= now)
            for _, _, slot, host in free[:3]:  # another process may take the first between the read and the write
                taken = db.execute(update(_SLOTS).where(
                    _SLOTS.c.host == host, _SLOTS.c.slot == slot,
                    or_(_SLOTS.c.holder.is_(None), _SLOTS.c.expires <= now)).values(
                    holder=self.holder, expires=now + self.lease))
                if taken.rowcount == 1:
                    return host, slot
        return None

    async def _renew(self, host: str, slot: int) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            await asyncio.to_thread(self._set, host, slot, self.holder, time.time() + self.lease)

    def _release(self, host: str, slot: int) -> None:
        self._set(host, slot, None, None)

    def _set(self, host: str, slot: int, holder: str | None, expires: float | None) -> None:
        with self.engine.begin() as db:
            db.execute(update(_SLOTS).where(and_(_SLOTS.c.host == host, _SLOTS.c.slot == slot,
                                                 _SLOTS.c.holder == self.holder))
                       .values(holder=holder, expires=expires))
