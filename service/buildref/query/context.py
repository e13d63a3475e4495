"""What the read-only queries need: the store, the repositories, and git work (in threads, bounded)
for revisions by content — computed, never stored."""

from __future__ import annotations

import os
from dataclasses import dataclass

from buildref.config import Repository
from buildref.errors import UnknownRepository
from buildref.models import RecordedBy
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


async def recorded_repository(ctx: QueryContext, reader: Reader, spec: str) -> RepositoryInfo:
    """A recorded repository, by the name it was recorded under or as ``record`` would name it (a
    configured name, path or URL)."""
    info = await reader.sources.repository(spec)
    if info is not None:
        return info
    repo = ctx.repositories.resolve(spec)
    info = await reader.sources.repository(repo.name)
    if info is None:
        raise UnknownRepository(f"repository '{repo.name[:200]}' has not been recorded yet (buildref record)")
    return info


def at_hand(ctx: QueryContext, info: RepositoryInfo) -> Repository | None:
    """The repository on this machine, if it is here: as configured here, else at the recorded
    path when this machine recorded it (in a fleet, another builder's path is on its machine, and a
    directory of that name here may be another repository) and it is still there."""
    configured = next((r for r in ctx.repositories.configured if r.name == info.name), None)
    if configured is not None:
        return configured if os.path.isdir(configured.path) else None
    if info.builder is not None and info.builder != ctx.builder:
        return None
    if not os.path.isdir(info.path):
        return None
    return Repository(info.name, info.path, info.url)


def recorded_by(info: RepositoryInfo) -> RecordedBy:
    """As answers say it: ``config``, a uid, or None when not known."""
    if info.recorded_by is None or info.recorded_by == "config":
        return info.recorded_by
    return int(info.recorded_by)
