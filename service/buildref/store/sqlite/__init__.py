"""The SQLite backend (the default): one file in WAL mode, one writer, a pool of readers."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import AsyncIterator

import structlog

from buildref.errors import StorageError
from buildref.store.api import Reader
from buildref.store.sqlite.builds import SqliteBuildIndex, SqliteBuildQueries
from buildref.store.sqlite.database import Database, connect
from buildref.store.sqlite.events import SqliteEventLog, SqliteEventQueries
from buildref.store.sqlite.schema import migrate
from buildref.store.sqlite.sources import SqliteSourceIndex, SqliteSourceQueries
from buildref.store.sqlite.uploads import SqliteUploadQueue


def _private(path: str) -> None:
    """The database and its WAL and shared-memory files readable by the service's user only:
    SQLite gives the WAL and -shm files the database file's mode, and a round-one database was
    made 0644."""
    for name in (path, path + "-wal", path + "-shm"):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(name, mode & 0o700)
            structlog.get_logger("buildref.store").warning("database file narrowed", path=name,
                                                           mode=oct(mode), now=oct(mode & 0o700))


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
        self.uploads = SqliteUploadQueue(db)

    @classmethod
    async def open(cls, path: str, durable: bool = True) -> SqliteStore:
        """Open (creating it, 0600, if new; narrowing it to 0600 if wider) and migrate the database
        at ``path``. A file SQLite cannot open (not a database, a damaged header, a directory) is a
        :class:`StorageError` with SQLite's own message. ``durable=False`` (commits not synced) is
        for loading a benchmark's synthetic index, never for the service."""
        if os.path.isdir(path):
            raise StorageError(f"cannot open the index {path}: it is a directory")
        if not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        _private(path)
        try:
            conn = await connect(path, reader=False)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            return cls(await Database.open(path, durable=durable))
        except sqlite3.Error as e:
            raise StorageError(f"cannot open the index {path}: {e}") from None

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
