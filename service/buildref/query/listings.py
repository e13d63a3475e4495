"""The plain listings: recent builds, events, one derivation as indexed, a repository's ref history."""

from __future__ import annotations

from buildref.errors import BadStorePath, NotFound, quoted
from buildref.models import Build, BuildsParams, DerivationInfo, Event, EventsParams, MatchedBuild, RefMove
from buildref.nix.storepath import MAX_BASE_NAME, StorePath
from buildref.query.context import QueryContext, recorded_repository
from buildref.query.lookup import builds_using


async def repository_builds(ctx: QueryContext, spec: str, since: float, limit: int) -> list[MatchedBuild]:
    """Builds that used the content of any recorded revision of a repository, newest first."""
    async with ctx.store.reading() as reader:
        info = await recorded_repository(ctx, reader, spec)
        forms = await reader.sources.repository_forms(info.id)
        contents = await reader.builds.contents_with_forms(forms)
        hashes = {t.nar_hash for t in (await reader.sources.trees(forms)).values()}
        found = await builds_using(reader, {c.path for c in contents}, hashes, False, None)
    builds = sorted((b for b in found if b.built_at >= since), key=lambda b: -b.built_at)
    return await ctx.caches.annotate(ctx.store, builds[:limit])


async def builds(ctx: QueryContext, p: BuildsParams) -> list[Build] | list[MatchedBuild]:
    if p.repo is not None:
        return await repository_builds(ctx, p.repo, p.since, p.limit)
    async with ctx.store.reading() as reader:
        recent = await reader.builds.recent(p.since, p.limit)
    return await ctx.caches.annotate(ctx.store, recent)


async def events(ctx: QueryContext, p: EventsParams) -> list[Event]:
    async with ctx.store.reading() as reader:
        if p.keys is not None:
            return await reader.events.by_keys(p.keys)
        return await reader.events.newest(p.state, p.limit)


async def show(ctx: QueryContext, what: str) -> DerivationInfo:
    """A derivation as indexed, by its path or by the path of one of its built outputs."""
    if len(what) > len(ctx.store_dir) + MAX_BASE_NAME:  # the errors below quote it whole
        raise NotFound(f"{quoted(what)} is longer than any store path")
    try:
        path = str(StorePath.parse(what, ctx.store_dir))
    except BadStorePath as e:
        raise NotFound(f"{quoted(what)} is not a store path: {e.args[0]}") from None
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
        info = await recorded_repository(ctx, reader, spec)
        return await reader.sources.ref_history(info.id)
