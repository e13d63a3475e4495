"""SQLite connections: one writer, whose transactions are serialised by a lock, and a pool of
read-only readers, each serving one snapshot (a read transaction) at a time. In WAL mode readers
never wait on the writer and never see what it has not committed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import aiosqlite

from buildref.errors import IndexLost, StorageError

T = TypeVar("T")

CHUNK = 500  # values per IN list: stays under SQLite's limit on bound parameters
READERS = 4


async def connect(path: str, *, reader: bool, durable: bool = True) -> aiosqlite.Connection:
    """A configured connection; closed again (its thread stopped) if configuring it fails.
    ``durable=False`` skips fsync at commit: only for loading a benchmark's synthetic index."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA foreign_keys = ON")
        if reader:
            await conn.execute("PRAGMA query_only = ON")  # the read path cannot write, even by mistake
        else:
            await conn.execute("PRAGMA journal_mode = WAL")
            # a committed event survives power loss
            await conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'OFF'}")
            # checkpoints (every 1000 pages) truncate the WAL back to this: it does not stay at its
            # high-water mark after a large record
            await conn.execute("PRAGMA journal_size_limit = 4194304")
    except BaseException:
        await conn.close()
        raise
    return conn


FileId = tuple[int, int] | None  # (st_dev, st_ino), or None for no file


def _file_id(path: str) -> FileId:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class Database:
    """The connections to one SQLite file; open with :meth:`open`, close once."""

    def __init__(self, path: str, writer: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._files: list[tuple[str, FileId]] = []  # what check_file compares with, from open()
        self._lost: str | None = None
        self._writing = asyncio.Lock()
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []

    @classmethod
    async def open(cls, path: str, readers: int = READERS, durable: bool = True) -> Database:
        writer = await connect(path, reader=False, durable=durable)
        db = cls(path, writer)
        try:
            for _ in range(readers):
                conn = await connect(path, reader=True)
                db._all_readers.append(conn)
                db._readers.put_nowait(conn)
        except BaseException:
            await db.close()
            raise
        # The files the connections hold open (the WAL exists while any connection is open, and
        # keeps its inode through checkpoints): a path that names another file, or none, means the
        # index was deleted or replaced under us.
        db._files = [(p, _file_id(p)) for p in (path, path + "-wal")]
        return db

    def check_file(self) -> None:
        """Raise :class:`IndexLost` when the database file, or its WAL, is no longer at its path:
        what was just committed went into an unlinked file. Two ``stat`` calls, after each commit."""
        if self._lost is None:
            for path, opened in self._files:
                if opened is not None and _file_id(path) != opened:
                    self._lost = (f"the index {self.path} was deleted or replaced while the service ran "
                                  f"({path} is {'gone' if _file_id(path) is None else 'another file'}): "
                                  "nothing more is acknowledged; restart the service")
                    break
        if self._lost is not None:
            raise IndexLost(self._lost)

    async def close(self) -> None:
        for conn in [*self._all_readers, self._writer]:
            with contextlib.suppress(Exception):
                await conn.close()
        self._all_readers.clear()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer, inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any error)."""
        async with self._writing:
            try:
                await _storage(self._writer.execute("BEGIN IMMEDIATE"))
                yield self._writer
            except BaseException as e:
                # also when the caller was cancelled (its client left) at any await, BEGIN's too:
                # what was queued still runs in the writer's thread, so ROLLBACK goes after it, and
                # the next transaction waits for it
                with contextlib.suppress(Exception):  # a failed statement may have ended it already
                    await _to_the_end(self._writer.execute("ROLLBACK"))
                if isinstance(e, sqlite3.Error):  # a full disk, say: the real reason, said once
                    raise StorageError(f"the index could not be written: {e}") from None
                raise
            try:
                await self._writer.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(Exception):
                    await self._writer.execute("ROLLBACK")
                raise StorageError(f"the index could not commit: {e}") from None
            self.check_file()

    @contextlib.asynccontextmanager
    async def statement(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer for one statement outside an explicit transaction (autocommit); the
        committed statement counts only if the file is still the index (the inbox acks after it)."""
        async with self._writing:
            yield self._writer
            self.check_file()

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[aiosqlite.Connection]:
        """A reader inside one read transaction: every query sees the same committed state."""
        conn = await self._readers.get()
        try:
            await conn.execute("BEGIN")
            yield conn
        finally:
            # ends the read transaction — also one whose BEGIN still ran after its caller was
            # cancelled — before another snapshot may have the connection (commit: only if begun)
            try:
                await _to_the_end(conn.commit())
            finally:
                self._readers.put_nowait(conn)

    def size(self) -> int:
        """Bytes on disk, write-ahead log included."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(self.path + suffix).st_size
        return total


async def _to_the_end(awaitable: Awaitable[T]) -> T:
    """``awaitable`` run to its end even if the caller is cancelled meanwhile; the cancellation
    is then raised. A transaction must be ended before its connection is used again."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                cancelled = True
                continue
            raise
        if cancelled:
            raise asyncio.CancelledError
        return result


async def _storage(awaitable: Any) -> Any:
    try:
        return await awaitable
    except sqlite3.Error as e:
        raise StorageError(f"the index is not available: {e}") from None


async def rows(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """The rows of one query, in one trip to the connection's thread."""
    return list(await conn.execute_fetchall(sql, params))


async def many(conn: aiosqlite.Connection, sql: str, params: Sequence[Sequence[Any]]) -> None:
    """``sql`` for each of ``params``; no trip to the connection's thread for none."""
    if params:
        await conn.executemany(sql, params)


async def rows_in(conn: aiosqlite.Connection, sql: str, values: Iterable[Any],
                  before: Sequence[Any] = ()) -> list[Any]:
    """Rows of ``sql``, whose ``{marks}`` is the IN list of ``values``, run in chunks that stay
    under SQLite's limit on bound parameters; ``before`` binds the parameters ahead of it."""
    return await made_in(conn, sql, values, lambda row: row, before)


async def made_in(conn: aiosqlite.Connection, sql: str, values: Iterable[Any], make: Callable[[Any], T],
                  before: Sequence[Any] = ()) -> list[T]:
    """As :func:`rows_in`, each row made into a record chunk by chunk: tens of thousands of rows
    are never turned into records in one go on the event loop."""
    wanted = list(values)
    found: list[T] = []
    for i in range(0, len(wanted), CHUNK):
        chunk = wanted[i:i + CHUNK]
        found += map(make, await rows(conn, sql.format(marks=",".join("?" * len(chunk))), [*before, *chunk]))
    return found
