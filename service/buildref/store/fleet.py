"""A builder in a fleet: its inbox in local SQLite, its builds and sources in the shared
PostgreSQL index.

The hook's ack waits only on the local, fsynced commit of its event; the indexer ships builds to
PostgreSQL afterwards. A build is written to the shared index first and its local event marked
indexed after: a crash between the two is a retry, which the shared index absorbs (a build is
unique by builder, derivation and time). While PostgreSQL is away, events stay pending locally —
nothing is failed or spooled for it — and are shipped when it is back.

Reads of the inbox (event counts, ``events``) come from local SQLite, everything else from
PostgreSQL: one ``reading()`` block is one snapshot of each, each taken at its first query.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from buildref.models import Event, EventCounts, EventState
from buildref.store.api import BuildRecord, ContentRecord, EventQueries, Reader
from buildref.store.postgres import PgIndex
from buildref.store.postgres.builds import PgBuildQueries
from buildref.store.postgres.sources import PgSourceIndex, PgSourceQueries
from buildref.store.sqlite import SqliteStore
from buildref.store.sqlite.events import SqliteEventLog
from buildref.store.sqlite.uploads import SqliteUploadQueue


class FleetBuildIndex:
    def __init__(self, index: PgIndex, inbox: SqliteEventLog) -> None:
        self._index = index
        self._inbox = inbox

    async def record(self, builds: Sequence[BuildRecord]) -> None:
        await self._index.builds.record(builds)
        await self._inbox.indexed([b.event_id for b in builds])

    async def pending_contents(self, limit: int) -> list[str]:
        return await self._index.builds.pending_contents(limit)

    async def record_contents(self, contents: Sequence[ContentRecord]) -> None:
        await self._index.builds.record_contents(contents)


class LocalEvents:
    """The inbox's queries over one local snapshot, taken at the first of them: most readings
    (every lookup) ask nothing of the inbox."""

    def __init__(self, inbox: SqliteStore, stack: contextlib.AsyncExitStack) -> None:
        self._inbox = inbox
        self._stack = stack
        self._queries: EventQueries | None = None

    async def _snapshot(self) -> EventQueries:
        if self._queries is None:
            self._queries = (await self._stack.enter_async_context(self._inbox.reading())).events
        return self._queries

    async def counts(self) -> EventCounts:
        return await (await self._snapshot()).counts()

    async def last(self) -> Event | None:
        return await (await self._snapshot()).last()

    async def by_keys(self, keys: Sequence[tuple[str, float]]) -> list[Event]:
        return await (await self._snapshot()).by_keys(keys)

    async def newest(self, state: EventState | None, limit: int) -> list[Event]:
        return await (await self._snapshot()).newest(state, limit)

    async def oldest_pending(self) -> float | None:
        return await (await self._snapshot()).oldest_pending()


class FleetReader:
    def __init__(self, events: LocalEvents, builds: PgBuildQueries, sources: PgSourceQueries) -> None:
        self.events = events
        self.builds = builds
        self.sources = sources


class FleetStore:
    def __init__(self, inbox: SqliteStore, index: PgIndex) -> None:
        self._inbox = inbox
        self._index = index
        self.events: SqliteEventLog = inbox.events
        self.builds = FleetBuildIndex(index, inbox.events)
        self.sources: PgSourceIndex = index.sources
        self.uploads: SqliteUploadQueue = inbox.uploads  # this machine's, like its inbox

    @classmethod
    async def open(cls, url: str, inbox: str, builder: str) -> FleetStore:
        """The local inbox at ``inbox`` (opened now) and the shared index at ``url`` (reached when
        first used, so that builds are acknowledged while it is away)."""
        return cls(await SqliteStore.open(inbox), PgIndex(url, builder))

    @property
    def location(self) -> str:
        return self._index.location

    def reading(self) -> contextlib.AbstractAsyncContextManager[Reader, bool | None]:
        return self._reading()

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[Reader]:
        async with contextlib.AsyncExitStack() as stack, self._index.reading() as shared:
            yield FleetReader(LocalEvents(self._inbox, stack), shared.builds, shared.sources)

    def size(self) -> int:
        return -1  # the shared index's size is the server's to tell

    async def close(self) -> None:
        try:
            await self._index.close()
        finally:
            await self._inbox.close()
