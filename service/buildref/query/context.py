"""What the read-only queries need: the store, the repositories, and git work (in threads, bounded)
for revisions by content — computed, never stored."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from buildref.config import Repository
from buildref.errors import UnknownRepository, quoted
from buildref.models import RecordedBy
from buildref.query.cached import CacheView
from buildref.sources.access import trusted
from buildref.sources.gitwork import GitWork
from buildref.sources.repositories import Repositories
from buildref.store.api import Reader, RepositoryInfo, Store

GIT_BUDGET = 10.0  # seconds of git work one query may do


@dataclass(frozen=True, slots=True)
class QueryContext:
    store: Store
    repositories: Repositories
    git: GitWork
    store_dir: str
    builder: str | None = None  # this service's: a path another builder recorded is on its machine
    caches: CacheView = field(default_factory=lambda: CacheView(None))  # configured binary caches


# The id of a configured repository the index has no row for yet (the watcher records it moments
# after start): no row has it, so its recorded history is empty, and git answers the rest.
UNRECORDED = 0


async def recorded_repository(ctx: QueryContext, reader: Reader, spec: str) -> RepositoryInfo:
    """A recorded (or configured) repository, by the name it was recorded under or as ``record``
    would name it (a configured name, path or URL)."""
    info = await reader.sources.repository(spec)
    if info is not None:
        return info
    # by names alone, never by looking at the path: whether another user's path exists or is
    # readable is not for the query socket to tell
    name = ctx.repositories.index_name(spec)
    info = await reader.sources.repository(name) if name != spec else None
    if info is None:
        configured = ctx.repositories.named(spec)
        if configured is not None:
            return RepositoryInfo(UNRECORDED, configured.name, configured.path, configured.url, "config")
        raise UnknownRepository(f"repository {quoted(name)} has not been recorded"
                                " (buildref record records it)")
    return info


async def searchable(ctx: QueryContext, reader: Reader) -> list[RepositoryInfo]:
    """Every repository a revision may be found in: the recorded ones and the configured ones."""
    found = await reader.sources.repositories()
    names = {r.name for r in found}
    return [*found, *(RepositoryInfo(UNRECORDED, r.name, r.path, r.url, "config")
                      for r in ctx.repositories.configured if r.name not in names)]


def at_hand(ctx: QueryContext, info: RepositoryInfo) -> Repository | None:
    """The repository on this machine, if it is here: as configured here, else at the recorded
    path when this machine recorded it (in a fleet, another builder's path is on its machine, and a
    directory of that name here may be another repository) and it is still there. One a user
    recorded is read with that user's rights (checked before each piece of git work)."""
    configured = next((r for r in ctx.repositories.configured if r.name == info.name), None)
    if configured is not None:
        return configured if os.path.isdir(configured.path) else None
    if info.builder is not None and info.builder != ctx.builder:
        return None
    if not os.path.isdir(info.path):
        return None
    by = recorded_by(info)
    owner = by if isinstance(by, int) and not trusted(by) else None
    return Repository(info.name, info.path, info.url, owner)


def recorded_by(info: RepositoryInfo) -> RecordedBy:
    """As answers say it: ``config``, a uid, or None when not known."""
    if info.recorded_by is None or info.recorded_by == "config":
        return info.recorded_by
    return int(info.recorded_by)
