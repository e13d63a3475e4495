"""The PostgreSQL backend: a fleet's shared index of builds and sources, written by many services
(each under its own ``builder`` name) and read by any. Events stay in each service's local inbox
(``store.fleet`` puts the two together)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from buildref.store.postgres.builds import PgBuildIndex, PgBuildQueries
from buildref.store.postgres.database import PgDatabase, Snapshot
from buildref.store.postgres.sources import PgSourceIndex, PgSourceQueries


class PgReader:
    """Builds and sources from one snapshot of the shared index."""

    def __init__(self, builds: PgBuildQueries, sources: PgSourceQueries) -> None:
        self.builds = builds
        self.sources = sources


class PgIndex:
    def __init__(self, url: str, builder: str) -> None:
        self._db = PgDatabase(url)
        self.builds = PgBuildIndex(self._db, builder)
        self.sources = PgSourceIndex(self._db)

    @property
    def location(self) -> str:
        """The database URL without its password."""
        return self._db.location

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[PgReader]:
        """Queries over one snapshot, taken at the block's first query."""
        async with contextlib.AsyncExitStack() as stack:
            snapshot = Snapshot(self._db, stack)
            yield PgReader(PgBuildQueries(snapshot), PgSourceQueries(snapshot))

    async def close(self) -> None:
        await self._db.close()
