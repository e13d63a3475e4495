"""The upload queue in SQLite: one row per store path, from queued to copied (or dropped)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from buildref.store.api import UploadCounts, UploadItem
from buildref.store.sqlite.database import Database, many, rows

_WAITING = "state IN ('pending', 'failed')"


class SqliteUploadQueue:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def enqueue(self, paths: Collection[str], now: float) -> None:
        if not paths:
            return
        async with self._db.transaction() as conn:
            await many(conn,
                "INSERT INTO uploads (path, state, due, queued_at) VALUES (?, 'pending', ?, ?)"
                # copied or dropped before and built again: copy again (a dropped path is back)
                " ON CONFLICT (path) DO UPDATE SET state = 'pending', attempts = 0, due = excluded.due,"
                " error = NULL, finished_at = NULL WHERE uploads.state = 'dropped'",
                [(path, now, now) for path in sorted(paths)])

    async def due(self, now: float, limit: int) -> list[UploadItem]:
        async with self._db.snapshot() as conn:
            found = await rows(conn, f"SELECT path, attempts FROM uploads WHERE {_WAITING} AND due <= ?"
                                     " ORDER BY due, path LIMIT ?", (now, limit))
        return [UploadItem(path, attempts) for path, attempts in found]

    async def next_due(self, now: float) -> float | None:
        async with self._db.snapshot() as conn:
            ((due,),) = await rows(conn, f"SELECT min(due) FROM uploads WHERE {_WAITING}")
        return None if due is None else max(0.0, due - now)

    async def done(self, paths: Collection[str], now: float) -> None:
        async with self._db.transaction() as conn:
            await many(conn, "UPDATE uploads SET state = 'done', finished_at = ?, error = NULL"
                                   " WHERE path = ?", [(now, path) for path in paths])

    async def failed(self, retries: Mapping[str, tuple[int, float]], error: str, now: float,
                     alone: bool) -> None:
        state = "failed" if alone else "pending"  # a path of a failed batch is only to be tried alone
        async with self._db.transaction() as conn:
            await many(conn,
                "UPDATE uploads SET state = ?, attempts = ?, due = ?, error = ? WHERE path = ?",
                [(state, attempts, due, error, path) for path, (attempts, due) in retries.items()])

    async def dropped(self, paths: Collection[str], now: float) -> None:
        async with self._db.transaction() as conn:
            await many(conn, "UPDATE uploads SET state = 'dropped', finished_at = ? WHERE path = ?",
                                   [(now, path) for path in paths])

    async def counts(self) -> UploadCounts:
        async with self._db.snapshot() as conn:
            found = dict(await rows(conn, "SELECT state, count(*) FROM uploads GROUP BY state"))
        return UploadCounts(found.get("pending", 0), found.get("done", 0), found.get("failed", 0),
                            found.get("dropped", 0))
