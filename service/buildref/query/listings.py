"""The plain listings: recent builds, events, one derivation as indexed, a repository's ref history."""

from __future__ import annotations

from buildref.errors import BadStorePath, NotFound
from buildref.models import Build, BuildsParams, DerivationInfo, Event, EventsParams, MatchedBuild, RefMove
from buildref.nix.storepath import StorePath
from buildref.query.context import QueryContext, recorded_repository
from buildref.query.lookup import repository_builds


async def builds(ctx: QueryContext, p: BuildsParams) -> list[Build] | list[MatchedBuild]:
    if p.repo is not None:
        return await repository_builds(ctx, p.repo, p.since, p.limit)
    async with ctx.store.reading() as reader:
        return await reader.builds.recent(p.since, p.limit)


async def events(ctx: QueryContext, p: EventsParams) -> list[Event]:
    async with ctx.store.reading() as reader:
        if p.keys is not None:
            return await reader.events.by_keys(p.keys)
        return await reader.events.newest(p.state, p.limit)


async def show(ctx: QueryContext, what: str) -> DerivationInfo:
    """A derivation as indexed, by its path or by the path of one of its built outputs."""
    try:
        path = str(StorePath.parse(what, ctx.store_dir))
    except BadStorePath as e:
        raise NotFound(f"'{what[:200]}' is not a store path: {e.args[0]}") from None
    async with ctx.store.reading() as reader:
        if not path.endswith(".drv"):
            producer = await reader.builds.producer(path)
            if producer is None:
                raise NotFound(f"'{path}' is neither an indexed derivation nor an output of a recorded build")
            path = producer.drv_path
        info = await reader.builds.derivation(path)
    if info is None:
        raise NotFound(f"'{path}' is not in the index")
    return info


async def ref_history(ctx: QueryContext, spec: str) -> list[RefMove]:
    async with ctx.store.reading() as reader:
        _, repo_id = await recorded_repository(ctx, reader, spec)
        return await reader.sources.ref_history(repo_id)
