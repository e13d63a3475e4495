"""``lookup``: which builds came from a ref — resolve it as recorded (now or at a time), take the
revision's source paths, and join them to the derivations that used them, up the closure graph.
Arrival order does not matter: a ref recorded after the build finds it, and the other way round."""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Sequence

from buildref.errors import BuildrefError, UnknownRevision
from buildref.models import Fallback, Lookup, LookupParams, MatchedBuild, Source
from buildref.query.context import QueryContext, recorded_repository
from buildref.store.api import IndexedBuild, Reader, SourceRecord

MAX_DISTANCE = 64  # steps up the closure graph a lookup follows
FALLBACK_DEPTH = 200  # first-parent ancestors a lookup tries when the tip has no build
_HEX_PREFIX = re.compile(r"[0-9a-f]{4,40}")


async def _resolve(reader: Reader, repo_id: int, ref: str, at: float) -> tuple[str, str]:
    if ref.startswith("refs/") or ref == "HEAD":
        names = [ref]
    else:
        names = [f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/remotes/{ref}", ref]
    target = await reader.sources.ref_target(repo_id, names, at)
    if target is not None:
        return target
    if _HEX_PREFIX.fullmatch(ref.lower()):
        revs = await reader.sources.revs_with_prefix(repo_id, ref.lower())
        if len(revs) == 1:
            return ref, revs[0]
        if len(revs) > 1:
            raise UnknownRevision(f"'{ref}' is ambiguous: {len(revs)} recorded revisions start with it")
    raise UnknownRevision(f"no recorded ref or revision '{ref[:100]}' (buildref record records refs)")


def valid(outputs: dict[str, str]) -> bool:
    """Every output is still in the local store."""
    return bool(outputs) and all(os.path.lexists(p) for p in outputs.values())


def matched(found: IndexedBuild, distance: int) -> MatchedBuild:
    b = found.build
    return MatchedBuild(b.drv_path, b.name, b.system, b.built_at, b.outputs, distance=distance,
                        valid=valid(b.outputs))


async def matched_builds(reader: Reader, sources: Sequence[SourceRecord], direct: bool,
                         name_glob: str | None) -> list[MatchedBuild]:
    """The newest build of each derivation that used one of ``sources``, closest first."""
    paths = sorted({s.store_path for s in sources})
    hashes = sorted({s.nar_hash for s in sources})
    distance = await reader.builds.derivations_using(paths, hashes, 0 if direct else MAX_DISTANCE)
    builds = []
    for found in await reader.builds.newest_builds(sorted(distance)):
        if name_glob is None or fnmatch.fnmatchcase(found.build.name, name_glob):
            builds.append(matched(found, distance[found.drv_id]))
    builds.sort(key=lambda b: (b.distance, -b.built_at))
    return builds


def source_list(sources: Sequence[SourceRecord]) -> tuple[Source, ...]:
    rules: dict[str, list[str]] = {}
    first: dict[str, SourceRecord] = {}
    for s in sources:
        first.setdefault(s.store_path, s)
        rules.setdefault(s.store_path, []).append(s.rule)
    return tuple(Source(s.store_path, s.nar_hash, s.subdir or None, tuple(sorted(rules[p])))
                 for p, s in first.items())


async def lookup(ctx: QueryContext, p: LookupParams) -> Lookup:
    at = p.at if p.at is not None else time.time()
    async with ctx.store.reading() as reader:
        name, repo_id = await recorded_repository(ctx, reader, p.repo)
        ref_name, rev = await _resolve(reader, repo_id, p.ref, at)
        sources = await reader.sources.revision_sources(repo_id, rev)
        builds = await matched_builds(reader, sources, p.direct, p.name)
    fallback = None
    if not builds:
        fallback, builds = await _fallback(ctx, name, repo_id, rev, p)
    return Lookup(repository=name, ref=ref_name, rev=rev, sources=source_list(sources), builds=tuple(builds),
                  fallback=fallback)


async def _fallback(ctx: QueryContext, name: str, repo_id: int, rev: str, p: LookupParams
                    ) -> tuple[Fallback | None, list[MatchedBuild]]:
    """The newest first-parent ancestor of ``rev`` that has a build. Sources of ancestors that
    were never recorded are computed from git objects, not stored: a query never writes."""
    try:
        repo = ctx.repositories.resolve(name)
        ancestors = await ctx.recorder.first_parents(repo, rev, FALLBACK_DEPTH)
    except BuildrefError:  # the repository is not at hand any more: no history to walk
        return None, []
    for behind, ancestor in enumerate(ancestors, start=1):
        async with ctx.store.reading() as reader:
            sources: Sequence[SourceRecord] = await reader.sources.revision_sources(repo_id, ancestor)
        if not sources:
            sources = await ctx.recorder.sources_of(repo, ancestor)
        async with ctx.store.reading() as reader:
            found = await matched_builds(reader, sources, p.direct, p.name)
        if found:
            return Fallback(ancestor, behind), found
    return None, []


async def repository_builds(ctx: QueryContext, spec: str, since: float, limit: int) -> list[MatchedBuild]:
    """Builds that used a source of any recorded revision of a repository, newest first."""
    async with ctx.store.reading() as reader:
        _, repo_id = await recorded_repository(ctx, reader, spec)
        distance = await reader.sources.repository_derivations(repo_id, MAX_DISTANCE)
        found = await reader.builds.newest_builds(sorted(distance))
    builds = [matched(f, distance[f.drv_id]) for f in found if f.build.built_at >= since]
    builds.sort(key=lambda b: -b.built_at)
    return builds[:limit]
