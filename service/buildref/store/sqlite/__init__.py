"""The SQLite backend (the default): one file in WAL mode, one writer, a pool of readers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from buildref.store.api import Reader
from buildref.store.sqlite.builds import SqliteBuildIndex, SqliteBuildQueries
from buildref.store.sqlite.database import Database, connect
from buildref.store.sqlite.events import SqliteEventLog, SqliteEventQueries
from buildref.store.sqlite.schema import migrate
from buildref.store.sqlite.sources import SqliteSourceIndex, SqliteSourceQueries


class SqliteReader:
    def __init__(self, events: SqliteEventQueries, builds: SqliteBuildQueries,
                 sources: SqliteSourceQueries) -> None:
        self.events = events
        self.builds = builds
        self.sources = sources


class SqliteStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.events = SqliteEventLog(db)
        self.builds = SqliteBuildIndex(db)
        self.sources = SqliteSourceIndex(db)

    @classmethod
    async def open(cls, path: str, durable: bool = True) -> SqliteStore:
        """Open (creating it, 0600, if new) and migrate the database at ``path``. ``durable=False``
        (commits not synced) is for loading a benchmark's synthetic index, never for the service."""
        if not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = await connect(path, reader=False)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return cls(await Database.open(path, durable=durable))

    @property
    def location(self) -> str:
        return self._db.path

    def reading(self) -> contextlib.AbstractAsyncContextManager[Reader, bool | None]:
        return self._reading()

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[Reader]:
        async with self._db.snapshot() as conn:
            yield SqliteReader(SqliteEventQueries(conn), SqliteBuildQueries(conn), SqliteSourceQueries(conn))

    def size(self) -> int:
        return self._db.size()

    async def close(self) -> None:
        await self._db.close()
