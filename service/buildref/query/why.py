"""``why``: which revision a store path — or a NAR hash — came from: the build that produced the
path, every source its closure used, and the recorded revisions (and refs, then and now) whose
trees those sources are; plus the flake.lock pins among them."""

from __future__ import annotations

from collections.abc import Sequence

from buildref.errors import BadHash, BuildrefError, NotFound
from buildref.models import SourceMatch, Why, WhyHash, WhyPath
from buildref.nix.hashes import Hash, HashAlgo
from buildref.query.context import QueryContext
from buildref.query.lookup import matched_builds
from buildref.store.api import Reader, RecordedSource, SourceRecord


async def why(ctx: QueryContext, what: str) -> Why:
    prefix = ctx.store_dir + "/"
    async with ctx.store.reading() as reader:
        if what.startswith(prefix):
            return await _why_path(reader, prefix + what[len(prefix):].split("/", 1)[0])
        try:
            nar_hash = Hash.parse(what, HashAlgo.SHA256).sri
        except BadHash:
            raise BuildrefError(f"'{what[:200]}' is neither a store path in {ctx.store_dir} "
                                "nor a NAR hash") from None
        sources = await reader.sources.recorded_sources([], [nar_hash])
        records = [SourceRecord(s.subdir, s.rule, s.nar_hash, s.store_path) for s in sources]
        builds = await matched_builds(reader, records, False, None) if records else []
        return WhyHash(nar_hash, await _with_refs(reader, sources, None), tuple(builds))


async def _why_path(reader: Reader, path: str) -> WhyPath:
    found = await reader.builds.producer(path)
    if found is None:
        raise NotFound(f"'{path}' is not an output of a recorded build")
    paths, hashes = await reader.builds.closure_inputs(found.drv_id)
    sources = await reader.sources.recorded_sources(paths, hashes)
    return WhyPath(path=path, drv_path=found.drv_path, output=found.output, built_at=found.built_at,
                   sources=await _with_refs(reader, sources, found.built_at),
                   locked_inputs=tuple(await reader.sources.locked_inputs(paths, hashes)))


async def _with_refs(reader: Reader, sources: Sequence[RecordedSource], built_at: float | None
                     ) -> tuple[SourceMatch, ...]:
    rules: dict[tuple[str, str, str, str, int, str], list[str]] = {}
    for s in sorted(sources, key=lambda s: (s.store_path, s.repository, s.rev, s.subdir, s.rule)):
        key = (s.store_path, s.repository, s.rev, s.subdir, s.rev_id, s.nar_hash)
        rules.setdefault(key, []).append(s.rule)
    result = []
    for (path, repo, rev, subdir, rev_id, nar_hash), names in rules.items():
        then = await reader.sources.refs_at(rev_id, built_at) if built_at is not None else []
        now = await reader.sources.refs_at(rev_id, None)
        result.append(SourceMatch(store_path=path, nar_hash=nar_hash, repository=repo, rev=rev,
                                  subdir=subdir or None, rules=tuple(names),
                                  refs=tuple(sorted({*then, *now})),
                                  refs_at_build=tuple(then), refs_now=tuple(now)))
    return tuple(result)
