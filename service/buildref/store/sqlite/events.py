"""The inbox in SQLite: events committed in groups (the hook's ack waits on this), their states."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import aiosqlite

from buildref.models import Event, EventCounts, EventState
from buildref.store.api import NewEvent, PendingEvent
from buildref.store.sqlite.database import Database, many, rows, rows_in

_EVENTS_PER_STATEMENT = 500  # 7 parameters each
_COLUMNS = "id, drv, t, received_at, source, state, error"


def _event(row: Any) -> Event:
    i, drv, t, received, source, state, error = row
    return Event(i, drv, t, received, source, EventState(state), error)


class SqliteEventLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(self, events: Sequence[NewEvent]) -> None:
        now = time.time()
        values = [
            (e.drv, " ".join(e.outs), e.t, now, e.source,
             EventState.FAILED.value if e.error else EventState.PENDING.value, e.error)
            for e in events
        ]
        # One statement per group, no BEGIN/COMMIT round trips: the hook's ack waits on this.
        async with self._db.statement() as conn:
            for i in range(0, len(values), _EVENTS_PER_STATEMENT):
                chunk = values[i:i + _EVENTS_PER_STATEMENT]
                marks = ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
                await conn.execute(
                    "INSERT INTO events (drv, outs, t, received_at, source, state, error)"
                    f" VALUES {marks} ON CONFLICT (drv, t) DO NOTHING",
                    [field for row in chunk for field in row],
                )

    async def pending(self, limit: int) -> list[PendingEvent]:
        async with self._db.snapshot() as conn:
            found = await rows(conn, "SELECT id, drv, outs, t FROM events WHERE state = 'pending'"
                                     " ORDER BY id LIMIT ?", (limit,))
        return [PendingEvent(i, drv, tuple(outs.split()), t) for i, drv, outs, t in found]

    async def fail(self, event_id: int, error: str) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("UPDATE events SET state = 'failed', error = ?, indexed_at = ? WHERE id = ?",
                               (error, time.time(), event_id))

    async def indexed(self, event_ids: Sequence[int]) -> None:
        """Mark events indexed whose builds another index holds (a fleet's shared index)."""
        async with self._db.transaction() as conn:
            await many(conn, "UPDATE events SET state = 'indexed', error = NULL, indexed_at = ?"
                                   " WHERE id = ?", [(time.time(), i) for i in event_ids])


class SqliteEventQueries:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def counts(self) -> EventCounts:
        counts = {s: 0 for s in EventState}
        for state, n in await rows(self._conn, "SELECT state, count(*) FROM events GROUP BY state"):
            counts[EventState(state)] = n
        return EventCounts(received=sum(counts.values()), indexed=counts[EventState.INDEXED],
                           failed=counts[EventState.FAILED], pending=counts[EventState.PENDING])

    async def last(self) -> Event | None:
        found = await rows(self._conn, f"SELECT {_COLUMNS} FROM events ORDER BY id DESC LIMIT 1")
        return _event(found[0]) if found else None

    async def by_keys(self, keys: Sequence[tuple[str, float]]) -> list[Event]:
        wanted = set(keys)
        found: list[Event] = []
        # by drv (rows_in asks in chunks, not per key), then the exact (drv, t) here
        for row in await rows_in(self._conn, f"SELECT {_COLUMNS} FROM events WHERE drv IN ({{marks}})",
                                 {drv for drv, _ in keys}):
            if (row[1], row[2]) in wanted:
                found.append(_event(row))
                wanted.discard((row[1], row[2]))
        return found

    async def oldest_pending(self) -> float | None:
        found = await rows(self._conn, "SELECT received_at FROM events WHERE state = 'pending'"
                                       " ORDER BY id LIMIT 1")
        return float(found[0][0]) if found else None

    async def newest(self, state: EventState | None, limit: int) -> list[Event]:
        if state is None:
            found = await rows(self._conn, f"SELECT {_COLUMNS} FROM events ORDER BY id DESC LIMIT ?",
                               (limit,))
        else:
            found = await rows(self._conn, f"SELECT {_COLUMNS} FROM events WHERE state = ?"
                                           " ORDER BY id DESC LIMIT ?", (state.value, limit))
        return [_event(row) for row in found]
