"""What the read-only queries need: the store, the repositories, and git work for revisions that
are not recorded (computed, never stored)."""

from __future__ import annotations

from dataclasses import dataclass

from buildref.errors import UnknownRepository
from buildref.sources.recorder import RefRecorder
from buildref.sources.repositories import Repositories
from buildref.store.api import Reader, Store


@dataclass(frozen=True, slots=True)
class QueryContext:
    store: Store
    repositories: Repositories
    recorder: RefRecorder
    store_dir: str


async def recorded_repository(ctx: QueryContext, reader: Reader, spec: str) -> tuple[str, int]:
    """(name, id) of a recorded repository, by the name it was recorded under or as ``record``
    would name it (a configured name, path or URL)."""
    repo_id = await reader.sources.repository_id(spec)
    if repo_id is not None:
        return spec, repo_id
    repo = ctx.repositories.resolve(spec)
    repo_id = await reader.sources.repository_id(repo.name)
    if repo_id is None:
        raise UnknownRepository(f"repository '{repo.name}' has not been recorded yet (buildref record)")
    return repo.name, repo_id
