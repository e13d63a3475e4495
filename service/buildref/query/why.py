"""``why``: which revision a store path — or a NAR hash — came from. The build that produced the
path, every source and fixed output its closure used, what each holds (its form), and the commits
whose tree, or a directory of it, has that form: recorded ones from the index, any other from the
repositories' history (bounded). Ranked so the answer to trust comes first."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from buildref.errors import BadHash, BuildrefError, NotFound
from buildref.git.history import History, Place, Search, find
from buildref.git.source import GitRepository
from buildref.git.tree_nar import TreeRule
from buildref.models import Match, SourceMatch, Why, WhyHash, WhyPath
from buildref.nix.hashes import Hash, HashAlgo
from buildref.query.context import GIT_BUDGET, QueryContext, at_hand, recorded_by
from buildref.query.lookup import builds_using
from buildref.store.api import ClosureItem, Reader, RepositoryInfo

PLACES = 5  # commits named per source and repository, newest first
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
    if what.startswith(prefix):
        return await _why_path(ctx, prefix + what[len(prefix):].split("/", 1)[0], deadline)
    try:
        nar_hash = Hash.parse(what, HashAlgo.SHA256).sri
    except BadHash:
        raise BuildrefError(f"'{what[:200]}' is neither a store path in {ctx.store_dir} "
                            "nor a NAR hash") from None
    async with ctx.store.reading() as reader:
        trees = [t for t in await reader.sources.trees_with_hash(nar_hash) if t.identifying]
        contents = [c for c in await reader.builds.contents_with_hashes([nar_hash])
                    if c.identifying or c.form is None]
        repositories = await reader.sources.repositories()
        builds = await builds_using(reader, {c.path for c in contents}, [nar_hash], False, None)
    wanted = [Wanted(t.form.hex(), nar_hash, t.form, t.raw, 0, None) for t in trees]
    wanted += [Wanted(c.path, nar_hash, c.form, None, 0, None) for c in contents if c.form is not None
               and c.form not in {t.form for t in trees}]
    sources = await _find_all(ctx, wanted, repositories, None, deadline)
    return WhyHash(nar_hash, sources, tuple(builds))


async def _why_path(ctx: QueryContext, path: str, deadline: float) -> WhyPath:
    async with ctx.store.reading() as reader:
        found = await reader.builds.producer(path)
        if found is None:
            raise NotFound(f"'{path}' is not an output of a recorded build")
        closure = await reader.builds.closure(found.drv_id)
        paths = [c.path for c in closure if c.path]
        hashes = [c.fixed_hash for c in closure if c.fixed_hash]
        wanted = await _wanted(reader, closure)
        pins = await reader.sources.locked_inputs(paths, hashes)
        repositories = await reader.sources.repositories()
    pinned = {(p.store_path, p.rev) for p in pins} | {(p.nar_hash, p.rev) for p in pins}
    wanted = [w if w.rev_hint else Wanted(w.path, w.nar_hash, w.form, w.raw, w.distance, _pin(pinned, w))
              for w in wanted]
    sources = await _find_all(ctx, wanted, repositories, found.built_at, deadline)
    return WhyPath(path=path, drv_path=found.drv_path, output=found.output, built_at=found.built_at,
                   sources=sources, locked_inputs=tuple(pins), builder=found.builder)


def _pin(pinned: set[tuple[str, str | None]], w: Wanted) -> str | None:
    """The revision a flake.lock pins for this content, if one does."""
    return next((rev for key, rev in pinned if key in (w.path, w.nar_hash)), None)


async def _wanted(reader: Reader, closure: Sequence[ClosureItem]) -> list[Wanted]:
    """What to look for: each identifying content of the closure (by form), and each fixed output
    whose content is not known (by its declared NAR hash, through the recorded trees)."""
    contents = await reader.builds.contents([c.path for c in closure if c.path])
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


def _search(git: GitRepository, history: History, wanted: Wanted, deadline: float) -> Search:
    assert wanted.form is not None  # only forms are searched
    history.refresh(deadline)
    search = find(git, history, wanted.form, wanted.raw, deadline, PLACES)
    if wanted.rev_hint and all(p.rev != wanted.rev_hint for p in search.places):
        try:  # the revision the derivation names, if it has the content, is named too
            commit = git.resolve(wanted.rev_hint)
        except BuildrefError:
            return search
        tree = commit.tree_id.raw
        rules = tuple(rule for rule in TreeRule
                      if (form := git.forms.at(tree, "", rule)) is not None and form.oid == wanted.form)
        if rules:
            search.places.insert(0, Place(str(commit.id), int(commit.commit_time), "", rules))
    return search


async def _find_all(ctx: QueryContext, wanted: Sequence[Wanted], repositories: Sequence[RepositoryInfo],
                    built_at: float | None, deadline: float) -> tuple[SourceMatch, ...]:
    found: dict[tuple[str, str, str, str], tuple[tuple[object, ...], SourceMatch]] = {}
    for w in wanted:
        for info in repositories:
            repo = at_hand(ctx, info)
            if repo is None or w.form is None or time.monotonic() > deadline:
                continue
            try:
                search = await ctx.git.search(repo, partial(_search, wanted=w, deadline=deadline))
            except BuildrefError:
                continue  # not readable now (moved, not a repository any more): nothing to find there
            for place in search.places:
                key = (w.path, info.name, place.rev, place.subdir)
                if key in found:
                    continue
                match = await _match(ctx, info, w, place, built_at)
                found[key] = (_rank(w, info, match, place), match)
    return tuple(m for _, m in sorted(found.values(), key=lambda item: item[0]))


async def _match(ctx: QueryContext, info: RepositoryInfo, w: Wanted, place: Place, built_at: float | None
                 ) -> SourceMatch:
    async with ctx.store.reading() as reader:
        then = await reader.sources.refs_at(info.id, place.rev, built_at) if built_at is not None else []
        now = await reader.sources.refs_at(info.id, place.rev, None)
    return SourceMatch(store_path=w.path, nar_hash=w.nar_hash, repository=info.name, rev=place.rev,
                       subdir=place.subdir or None, rules=tuple(sorted(r.value for r in place.rules)),
                       refs=tuple(sorted({*then, *now})), refs_at_build=tuple(then), refs_now=tuple(now),
                       match=Match.EXACT, recorded_by=recorded_by(info), distance=w.distance)


def _ref_class(refs: Sequence[str]) -> int:
    """Default branch and tags (0), other branches (1), pull-request refs (2), no ref (3)."""
    classes = [0 if r.startswith("refs/tags/") or r in _DEFAULT_BRANCHES else
               2 if r.startswith(("refs/pull/", "refs/merge-requests/")) or "/pr/" in r else 1 for r in refs]
    return min(classes, default=3)


def _rank(w: Wanted, info: RepositoryInfo, match: SourceMatch, place: Place) -> tuple[object, ...]:
    return (place.rev != w.rev_hint, match.distance, info.recorded_by != "config", _ref_class(match.refs),
            match.match is not Match.EXACT, -place.commit_time, info.name, place.rev, w.path)
