"""``why``: which revision a store path — or a NAR hash — came from. The build that produced the
path, every source and fixed output its closure used, what each holds (its form), and the commits
whose tree, or a directory of it, has that form: recorded ones from the index, any other from the
repositories' history (bounded). Ranked so the answer to trust comes first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from buildref.errors import BadHash, BuildrefError, NotFound, quoted
from buildref.git.history import History, Place, Search, find
from buildref.git.partial import PartialPlace, find_partial
from buildref.git.source import GitRepository
from buildref.git.tree_nar import TreeRule
from buildref.models import Match, Source, SourceMatch, Why, WhyHash, WhyPath
from buildref.nix.hashes import Hash, HashAlgo
from buildref.nix.nar import hash_path
from buildref.nix.storepath import MAX_BASE_NAME
from buildref.query.context import GIT_BUDGET, QueryContext, at_hand, recorded_by, searchable
from buildref.query.lookup import builds_using, flat_file, manifest, partial_source
from buildref.store.api import ClosureItem, ContentRecord, FlatFixed, Reader, RepositoryInfo

PLACES = 5  # commits named per source and repository, newest first
INSIDE = 50  # directories of one source looked for as revisions' trees
_DEFAULT_BRANCHES = ("refs/heads/main", "refs/heads/master", "HEAD")


@dataclass(frozen=True, slots=True)
class Wanted:
    """Content to find in repositories: a form (a source, a built fixed output), or only a NAR
    hash (a fixed output never built), with what the closure says of it."""

    path: str
    nar_hash: str
    form: bytes | None
    raw: bytes | None  # the git tree the form was made from, when recorded and not the same
    distance: int
    rev_hint: str | None  # a revision the derivation (or a flake.lock pin) names


async def why(ctx: QueryContext, what: str) -> Why:
    prefix = ctx.store_dir + "/"
    deadline = time.monotonic() + GIT_BUDGET
    if len(what) > len(prefix) + MAX_BASE_NAME:  # the errors below quote it whole
        raise NotFound(f"{quoted(what)} is longer than any store path or NAR hash")
    if what.startswith(prefix):
        return await _why_path(ctx, prefix + what[len(prefix):].split("/", 1)[0], deadline)
    try:
        nar_hash = Hash.parse(what, HashAlgo.SHA256).sri
    except BadHash:
        raise BuildrefError(f"{quoted(what)} is neither a store path in {ctx.store_dir} "
                            "nor a NAR hash") from None
    async with ctx.store.reading() as reader:
        trees = [t for t in await reader.sources.trees_with_hash(nar_hash) if t.identifying]
        contents = [c for c in await reader.builds.contents_with_hashes([nar_hash])
                    if c.identifying or c.form is None]
        repositories = await searchable(ctx, reader)
        builds = await builds_using(reader, {c.path for c in contents}, [nar_hash], False, None)
    builds = await ctx.caches.annotate(ctx.store, builds)
    wanted = [Wanted(t.form.hex(), nar_hash, t.form, t.raw, 0, None) for t in trees]
    wanted += [Wanted(c.path, nar_hash, c.form, None, 0, None) for c in contents if c.form is not None
               and c.form not in {t.form for t in trees}]
    found: dict[tuple[str, str, str, str], tuple[tuple[object, ...], SourceMatch]] = {}
    not_searched: set[str] = set()
    await _find_all(ctx, wanted, repositories, None, deadline, found, not_searched)
    sources = tuple(m for _, m in sorted(found.values(), key=lambda entry: entry[0]))
    return WhyHash(nar_hash, sources, tuple(builds), tuple(sorted(not_searched)))


async def _why_path(ctx: QueryContext, path: str, deadline: float) -> WhyPath:
    async with ctx.store.reading() as reader:
        found = await reader.builds.producer(path)
        if found is None:
            raise NotFound(f"'{path}' is not an output of a recorded build")
        closure = await reader.builds.closure(found.drv_id)
        paths = [c.path for c in closure if c.path]
        hashes = [c.fixed_hash for c in closure if c.fixed_hash]
        contents = await reader.builds.contents(paths)
        wanted = await _wanted(reader, closure, contents)
        pins = await reader.sources.locked_inputs(paths, hashes)
        repositories = await searchable(ctx, reader)
    caches, unknown = await ctx.caches.of_paths(ctx.store, [path])
    pinned = {(p.store_path, p.rev) for p in pins} | {(p.nar_hash, p.rev) for p in pins}
    wanted = [w if w.rev_hint else Wanted(w.path, w.nar_hash, w.form, w.raw, w.distance, _pin(pinned, w))
              for w in wanted]
    found_matches: dict[tuple[str, str, str, str], tuple[tuple[object, ...], SourceMatch]] = {}
    not_searched: set[str] = set()
    await _find_all(ctx, wanted, repositories, found.built_at, deadline, found_matches, not_searched)
    # what no revision has exactly: a revision's tree inside it (vendored, a submodule), or it is a
    # subset or a superset of a revision's files
    exact = {key[0] for key in found_matches}
    rest = [c for c in closure if c.path and c.path not in exact and (content := contents.get(c.path))
            and content.identifying]
    if rest:  # (a revision inside a source does not make the source itself a revision's)
        await _inside(ctx, rest, repositories, found.built_at, deadline, found_matches, not_searched)
        async with ctx.store.reading() as reader:
            samples = await reader.builds.samples_of([item.path for item in rest if item.path])
        for item in rest:
            assert item.path is not None
            await _partial(ctx, item, contents[item.path].nar_hash or "", samples.get(item.path, []),
                           repositories, found.built_at, deadline, found_matches, not_searched)
    for item in closure:  # a flat fixed output of one file the derivation names
        if item.path_hint and item.rev_hint:
            await _flat(ctx, item, repositories, found.built_at, found_matches, not_searched)
    sources = tuple(m for _, m in sorted(found_matches.values(), key=lambda entry: entry[0]))
    return WhyPath(path=path, drv_path=found.drv_path, output=found.output, built_at=found.built_at,
                   sources=sources, locked_inputs=tuple(pins), not_searched=tuple(sorted(not_searched)),
                   builder=found.builder, caches=caches, caches_unknown=unknown)


def _pin(pinned: set[tuple[str, str | None]], w: Wanted) -> str | None:
    """The revision a flake.lock pins for this content, if one does."""
    return next((rev for key, rev in pinned if key in (w.path, w.nar_hash)), None)


async def _wanted(reader: Reader, closure: Sequence[ClosureItem], contents: Mapping[str, ContentRecord]
                  ) -> list[Wanted]:
    """What to look for: each identifying content of the closure (by form; ``contents``: what the
    index learnt of its paths), and each fixed output whose content is not known (by its declared
    NAR hash, through the recorded trees)."""
    wanted: list[Wanted] = []
    for item in closure:
        content = contents.get(item.path) if item.path else None
        if content is not None and content.form is not None:
            if content.identifying:
                wanted.append(Wanted(item.path or "", content.nar_hash or "", content.form, None,
                                     item.distance, item.rev_hint))
            continue
        nar_hash = item.fixed_hash or (content.nar_hash if content else None)
        if nar_hash is None:
            continue
        for tree in await reader.sources.trees_with_hash(nar_hash):
            if tree.identifying:
                wanted.append(Wanted(item.path or tree.form.hex(), nar_hash, tree.form, tree.raw,
                                     item.distance, item.rev_hint))
    known = await reader.sources.trees([w.form for w in wanted if w.form and w.raw is None])
    return [Wanted(w.path, w.nar_hash, w.form, known[w.form].raw, w.distance, w.rev_hint)
            if w.form in known and w.raw is None else w for w in wanted]


def _search(git: GitRepository, history: History, wanted: Wanted, deadline: float, roots_only: bool = False
            ) -> Search:
    assert wanted.form is not None  # only forms are searched
    history.refresh(deadline)
    search = find(git, history, wanted.form, wanted.raw, deadline, PLACES, roots_only)
    if wanted.rev_hint and all(p.rev != wanted.rev_hint for p in search.places):
        try:  # the revision the derivation names, if it has the content, is named too
            commit = git.resolve(wanted.rev_hint)
        except BuildrefError:
            return search
        tree, data = commit.tree_id.raw, git.commit_data(commit)
        rules = tuple(rule for rule in TreeRule
                      if (form := git.forms.at(tree, "", rule, data)) is not None and form.oid == wanted.form)
        if rules:
            search.places.insert(0, Place(str(commit.id), int(commit.commit_time), "", rules))
    return search


Found = dict[tuple[str, str, str, str], tuple[tuple[object, ...], SourceMatch]]


async def _find_all(ctx: QueryContext, wanted: Sequence[Wanted], repositories: Sequence[RepositoryInfo],
                    built_at: float | None, deadline: float, found: Found, not_searched: set[str],
                    roots_only: bool = False) -> None:
    """Exact places of each wanted form, in every repository at hand, into ``found``."""
    for w in wanted:
        for info in repositories:
            repo = at_hand(ctx, info)
            if repo is None or time.monotonic() > deadline:
                not_searched.add(info.name)
                continue
            if w.form is None:
                continue
            try:
                search = await ctx.git.search(repo, partial(_search, wanted=w, deadline=deadline,
                                                            roots_only=roots_only))
            except BuildrefError:
                not_searched.add(info.name)  # not readable now (moved, not a repository any more)
                continue
            if not search.complete:
                not_searched.add(info.name)
            for place in search.places:
                key = (w.path, info.name, place.rev, place.subdir)
                if key not in found:
                    match = await _match(ctx, info, w, place, built_at)
                    found[key] = (_rank(w.rev_hint, info, match, place.commit_time, w.path), match)


async def _inside(ctx: QueryContext, items: Sequence[ClosureItem], repositories: Sequence[RepositoryInfo],
                  built_at: float | None, deadline: float, found: Found, not_searched: set[str]) -> None:
    """A revision's tree as a directory of a larger source (vendored, a submodule filled in)."""
    async with ctx.store.reading() as reader:
        dirs = await reader.builds.dirs_of([i.path for i in items if i.path])
    wanted = []
    for item in items:
        for subdir, form in dirs.get(item.path or "", [])[:INSIDE]:
            path = f"{item.path}/{subdir}"
            digest = await asyncio.to_thread(hash_path, path)
            wanted.append(Wanted(path, digest.nar_hash.sri, form, None, item.distance, item.rev_hint))
    # only a revision's whole tree counts as vendored (a submodule filled in); a directory of it
    # that is also somewhere in a source names nothing
    await _find_all(ctx, wanted, repositories, built_at, deadline, found, not_searched, roots_only=True)


async def _partial(ctx: QueryContext, item: ClosureItem, nar_hash: str, samples: list[tuple[str, bytes]],
                   repositories: Sequence[RepositoryInfo], built_at: float | None, deadline: float,
                   found: Found, not_searched: set[str]) -> None:
    """The revisions a source is a subset or a superset of (bounded; verified file by file), from
    its sampled files (``samples``)."""
    assert item.path is not None
    if not samples:
        return
    copy = await asyncio.to_thread(manifest, item.path)
    if copy is None:
        return  # not in the store any more: what it held cannot be compared now
    for info in repositories:
        repo = at_hand(ctx, info)
        if repo is None or time.monotonic() > deadline:
            not_searched.add(info.name)
            continue

        def search(git: GitRepository, history: History) -> tuple[list[PartialPlace], bool]:
            history.refresh(deadline)
            return find_partial(git, history, copy, samples, deadline)

        try:
            places, complete = await ctx.git.search(repo, search)
        except BuildrefError:
            not_searched.add(info.name)
            continue
        if not complete:
            not_searched.add(info.name)
        for place in places:
            source = partial_source(item.path, nar_hash, place.prefix, place.rules, place.relation, None)
            match = await _matched(ctx, info, built_at, source, place.rev, item.distance)
            rank = _rank(item.rev_hint, info, match, place.commit_time, item.path)
            found[(item.path, info.name, place.rev, place.prefix)] = (rank, match)


async def _flat(ctx: QueryContext, item: ClosureItem, repositories: Sequence[RepositoryInfo],
                built_at: float | None, found: Found, not_searched: set[str]) -> None:
    """A flat fixed output of the one file of the revision its URL names."""
    assert item.rev_hint is not None and item.path_hint is not None and item.fixed_hash is not None
    flat = FlatFixed(0, item.fixed_hash, item.rev_hint, item.path_hint, item.path)
    for info in repositories:
        repo = at_hand(ctx, info)
        if repo is None:
            not_searched.add(info.name)
            continue
        try:
            source = await ctx.git.run(repo, partial(flat_file, rev=item.rev_hint, item=flat))
        except BuildrefError:
            continue
        if source is None:
            continue
        match = await _matched(ctx, info, built_at, source, item.rev_hint, item.distance)
        found[(source.store_path, info.name, item.rev_hint, item.path_hint)] = (
            _rank(item.rev_hint, info, match, 0, source.store_path), match)


async def _matched(ctx: QueryContext, info: RepositoryInfo, built_at: float | None, source: Source, rev: str,
                   distance: int) -> SourceMatch:
    """``source`` of revision ``rev`` of ``info`` as ``why`` answers it: with the refs that pointed at
    the revision when the build was made and now (as recorded)."""
    async with ctx.store.reading() as reader:
        then = await reader.sources.refs_at(info.id, rev, built_at) if built_at is not None else []
        now = await reader.sources.refs_at(info.id, rev, None)
    return SourceMatch(store_path=source.store_path, nar_hash=source.nar_hash, repository=info.name, rev=rev,
                       subdir=source.subdir, rules=source.rules, refs=tuple(sorted({*then, *now})),
                       refs_at_build=tuple(then), refs_now=tuple(now), match=source.match, files=source.files,
                       extra=source.extra, recorded_by=recorded_by(info), distance=distance)


async def _match(ctx: QueryContext, info: RepositoryInfo, w: Wanted, place: Place, built_at: float | None
                 ) -> SourceMatch:
    source = Source(w.path, w.nar_hash, place.subdir or None, tuple(sorted(r.value for r in place.rules)))
    return await _matched(ctx, info, built_at, source, place.rev, w.distance)


def _ref_class(refs: Sequence[str]) -> int:
    """Default branch and tags (0), other branches (1), pull-request refs (2), no ref (3)."""
    classes = [0 if r.startswith("refs/tags/") or r in _DEFAULT_BRANCHES else
               2 if r.startswith(("refs/pull/", "refs/merge-requests/")) or "/pr/" in r else 1 for r in refs]
    return min(classes, default=3)


def _rank(rev_hint: str | None, info: RepositoryInfo, match: SourceMatch, commit_time: int, path: str
          ) -> tuple[object, ...]:
    """Exact before partial, always; then the revision the derivation names, the closest, the
    configured repositories, default branch and tags, the newest."""
    return (match.match is not Match.EXACT, match.rev != rev_hint, match.distance,
            info.recorded_by != "config", _ref_class(match.refs), -commit_time, info.name, match.rev, path)
