"""Connections to a fleet's shared PostgreSQL index: a pool of readers, each serving one snapshot
(a READ ONLY REPEATABLE READ transaction: one ``reading()`` block sees one committed state), and one
writer per service whose transactions a lock serialises, as with SQLite. Other services write the
same database at the same time: every write is idempotent and takes its rows in a fixed order, and
a transaction PostgreSQL aborts for a deadlock or a serialisation conflict is run again.

Nothing connects until the index is first used, and a connection that fails is tried again at the
next use: the service starts, and acknowledges builds, while PostgreSQL is away. Every failure to
reach or use the database is a :class:`StorageError`, which the writers above keep their work
pending on (never a failed event)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from buildref.errors import StorageError
from buildref.store import redacted
from buildref.store.postgres.schema import migrate

READERS = 4
CONNECT_TIMEOUT = 10.0  # seconds to reach the server
COMMAND_TIMEOUT = 60.0  # seconds one statement may take
WRITE_ATTEMPTS = 5  # a transaction aborted by a deadlock or serialisation conflict runs again
CLOSE_TIMEOUT = 5.0  # seconds the pools get to close at shutdown

T = TypeVar("T")
if TYPE_CHECKING:  # every connection comes from a pool
    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]
else:
    Conn = PoolConnectionProxy

# what "the index is not available" looks like from asyncpg: refused or lost connections, server
# errors (a shutdown, a full disk), timeouts
_UNAVAILABLE = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_RETRY = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


def unavailable(e: BaseException) -> StorageError:
    return StorageError(f"the shared index is not available: {type(e).__name__}: {e}".rstrip(": "))


async def _no_session_state(conn: asyncpg.Connection) -> None:
    return None


class PgDatabase:
    """The pools for one database URL; close once."""

    def __init__(self, url: str, readers: int = READERS) -> None:
        self.url = url
        self.location = redacted(url)
        self._readers_size = readers
        self._readers: asyncpg.Pool | None = None
        self._writer: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._writing = asyncio.Lock()
        self._closed = False

    async def _pools(self) -> tuple[asyncpg.Pool, asyncpg.Pool]:
        """The reader and writer pools, made (and the schema brought up to date) on first use."""
        if self._readers is not None and self._writer is not None:
            return self._readers, self._writer
        async with self._opening:
            if self._closed:
                raise StorageError("the shared index is closed")
            if self._readers is None or self._writer is None:
                writer = await self._pool(1)
                try:
                    async with writer.acquire() as conn:
                        await migrate(conn)
                    readers = await self._pool(self._readers_size)
                except BaseException:
                    await writer.close()
                    raise
                self._readers, self._writer = readers, writer
        return self._readers, self._writer

    async def _pool(self, size: int) -> asyncpg.Pool:
        # min_size 0: connections are made as they are needed, and again after a failure. No reset
        # query when a connection goes back to the pool (a round trip per question): nothing here
        # sets session state (no SET, LISTEN, cursors or session locks), and an open transaction
        # is rolled back all the same.
        pool = asyncpg.create_pool(self.url, min_size=0, max_size=size, timeout=CONNECT_TIMEOUT,
                                   command_timeout=COMMAND_TIMEOUT, reset=_no_session_state)
        return await pool

    async def close(self) -> None:
        async with self._opening:
            self._closed = True
            for pool in (self._readers, self._writer):
                if pool is None:
                    continue
                try:  # gracefully, unless a statement still runs (a server that stopped answering)
                    await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
                except Exception:
                    pool.terminate()
            self._readers = self._writer = None

    async def write(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """``work`` in one transaction of this service's writer; run again when PostgreSQL aborted
        it for a conflict with another writer, so ``work`` must only write (and read what it writes)."""
        async with self._writing:
            for attempt in range(1, WRITE_ATTEMPTS + 1):
                try:
                    _, writer = await self._pools()
                    async with writer.acquire() as conn, conn.transaction():
                        return await work(conn)
                except _RETRY as e:
                    if attempt == WRITE_ATTEMPTS:
                        raise unavailable(e) from None
                    await asyncio.sleep(0.01 * attempt)
                except StorageError:
                    raise
                except _UNAVAILABLE as e:
                    raise unavailable(e) from None
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Conn]:
        """A reader inside one READ ONLY REPEATABLE READ transaction."""
        try:
            readers, _ = await self._pools()
            conn = await readers.acquire()
        except StorageError:
            raise
        except _UNAVAILABLE as e:
            raise unavailable(e) from None
        try:
            transaction = conn.transaction(isolation="repeatable_read", readonly=True)
            try:
                await transaction.start()
            except _UNAVAILABLE as e:
                raise unavailable(e) from None
            try:
                yield conn
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                raise unavailable(e) from None
            finally:
                with contextlib.suppress(*_UNAVAILABLE):
                    await transaction.rollback()  # it wrote nothing: nothing to commit
        finally:
            await readers.release(conn)


class Snapshot:
    """What one ``reading()`` block asks through: the snapshot is taken (a reader connection, its
    transaction begun) at the first query, so a block that asks nothing of the shared index never
    waits on it; every failure is a :class:`StorageError`, raised where the query was asked."""

    def __init__(self, db: PgDatabase, stack: contextlib.AsyncExitStack) -> None:
        self._db = db
        self._stack = stack
        self._conn: Conn | None = None
        self._taking = asyncio.Lock()

    async def _connection(self) -> Conn:
        if self._conn is None:
            async with self._taking:
                if self._conn is None:
                    self._conn = await self._stack.enter_async_context(self._db.snapshot())
        return self._conn

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await self._connection()
        try:
            return await conn.fetch(sql, *args)
        except _UNAVAILABLE as e:
            raise unavailable(e) from None

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        conn = await self._connection()
        try:
            return await conn.fetchrow(sql, *args)
        except _UNAVAILABLE as e:
            raise unavailable(e) from None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        conn = await self._connection()
        try:
            return await conn.fetchval(sql, *args)
        except _UNAVAILABLE as e:
            raise unavailable(e) from None
