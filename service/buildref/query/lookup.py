"""``lookup``: which builds came from a ref. The ref is resolved as git resolves it (anything git
does: branches, tags — a tag wins over a branch of the same name —, hashes, ``main~3``), or as
recorded at a time; the revision's directories are formed from git objects (under both rules);
and the builds whose sources have those forms — whatever the store paths are named — or whose
fixed-output hash is the revision's NAR hash are joined, up the closure graph. Any commit works,
whether or not it was ever a ref's tip; arrival order does not matter."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

from buildref.config import Repository
from buildref.errors import BadArchive, BuildrefError, UnknownRevision, quoted
from buildref.git.forms import blob_id, distinctive_leaf, read_copy
from buildref.git.history import resolve
from buildref.git.partial import CANDIDATES, Relation, best_relation, prefixes
from buildref.git.source import GitRepository
from buildref.git.tree_nar import TreeRule
from buildref.models import (
    Extra,
    Fallback,
    FileCounts,
    Lookup,
    LookupParams,
    Match,
    MatchedBuild,
    RecordedBy,
    Source,
    glob,
)
from buildref.nix.hashes import Hash, HashAlgo
from buildref.nix.storepath import source_path
from buildref.query.context import GIT_BUDGET, QueryContext, at_hand, recorded_by, recorded_repository
from buildref.sources.recorder import RevisionForms, first_parents, revision_forms
from buildref.store.api import ContentRecord, FlatFixed, IndexedBuild, Reader, RepositoryInfo

MAX_DISTANCE = 64  # steps up the closure graph a lookup follows
FALLBACK_DEPTH = 200  # first-parent ancestors a lookup tries when the revision has no build
MANIFEST_FILES = 100_000  # a store copy with more files (or bytes) is not compared file by file
MANIFEST_BYTES = 1 << 30
_HEX_PREFIX = re.compile(r"[0-9a-f]{4,40}")


def valid(outputs: dict[str, str]) -> bool:
    """Every output is still in the local store."""
    return bool(outputs) and all(os.path.lexists(p) for p in outputs.values())


def matched(found: IndexedBuild, distance: int) -> MatchedBuild:
    b = found.build
    return MatchedBuild(b.drv_path, b.name, b.system, b.built_at, b.outputs, b.builder, distance=distance,
                        valid=valid(b.outputs))


async def builds_using(reader: Reader, paths: Collection[str], hashes: Collection[str], direct: bool,
                       name_glob: str | None, drv_ids: Collection[int] = ()) -> list[MatchedBuild]:
    """The newest build of each derivation that used one of ``paths`` (or whose recursive fixed
    output is one of ``hashes``, or that is one of ``drv_ids``), and of those above it; closest
    first, then newest."""
    distance = await reader.builds.derivations_using(paths, hashes, 0 if direct else MAX_DISTANCE, drv_ids)
    found = await reader.builds.newest_builds(distance)
    # as many names to match and outputs to look for as the index holds: not on the event loop
    return await asyncio.to_thread(_matched_builds, found, distance, name_glob)


def _matched_builds(found: list[IndexedBuild], distance: dict[int, int], name_glob: str | None
                    ) -> list[MatchedBuild]:
    name = glob(name_glob).fullmatch if name_glob is not None else None
    builds = [matched(f, distance[f.drv_id]) for f in found if name is None or name(f.build.name)]
    builds.sort(key=lambda b: (b.distance, -b.built_at))
    return builds


@dataclass(frozen=True, slots=True)
class Revision:
    """What a lookup knows of a revision: its directories' forms (from git, when the repository
    is at hand), and its roots' forms and NAR hashes (from git, or as recorded)."""

    rev: str
    forms: RevisionForms | None
    roots: Roots
    places: Places = field(default_factory=dict)  # identifying form -> its directories (with forms)


@dataclass(frozen=True, slots=True)
class Joined:
    sources: tuple[Source, ...]
    builds: list[MatchedBuild]


Roots = dict[TreeRule, tuple[bytes | None, str | None]]  # rule -> (form, NAR hash)
Places = dict[bytes, list[tuple[str, TreeRule]]]


def forms_and_places(repo: GitRepository, rev: str) -> tuple[RevisionForms, Places]:
    """A revision's forms, and where each identifying one is; in the git thread (a revision of
    tens of thousands of directories is not for the event loop)."""
    forms = revision_forms(repo, rev)
    places: Places = {}
    for d in forms.directories:
        if d.form.identifying:
            places.setdefault(d.form.oid, []).append((d.subdir, d.rule))
    return forms, places


def unseen_forms(repo: GitRepository, rev: str, seen: set[bytes]) -> set[bytes]:
    """The identifying forms of ``rev`` not in ``seen`` (whole revisions' identifying forms): a
    revision next to one already looked at shares nearly all its forms, and the same form finds
    the same builds. Directories whose form was seen are not entered again."""
    commit = repo.resolve(rev)
    tree, data = commit.tree_id.raw, repo.commit_data(commit)
    return {d.form.oid for rule in (TreeRule.EXPORT_IGNORE, TreeRule.RAW)
            for d in repo.forms.directories(tree, rule, data, beyond=seen) if d.form.identifying} - seen


def root_digests(repo: GitRepository, forms: RevisionForms) -> Roots:
    roots: Roots = {}
    commit = repo.resolve(forms.rev)
    for rule in TreeRule:
        form = forms.root(rule)
        roots[rule] = (form, repo.digest(commit, "", rule).nar_hash.sri if form else None)
    return roots


async def _revision(ctx: QueryContext, reader_info: RepositoryInfo, repo: Repository | None,
                    rev: str) -> Revision:
    if repo is not None:
        forms, places = await ctx.git.run(repo, partial(forms_and_places, rev=rev))
        async with ctx.store.reading() as reader:
            known = await reader.sources.trees([f for r in TreeRule if (f := forms.root(r))])
        roots: Roots = {
            r: (f, known[f].nar_hash if f in known else None) for r in TreeRule if (f := forms.root(r))}
        if any(nar is None for _, nar in roots.values()):
            roots = await ctx.git.run(repo, partial(root_digests, forms=forms))
        return Revision(rev, forms, roots, places)
    async with ctx.store.reading() as reader:
        return await recorded_revision(reader, reader_info, rev)


async def recorded_revision(reader: Reader, info: RepositoryInfo, rev: str) -> Revision:
    """What the index recorded of ``rev`` (its roots' forms and NAR hashes), for a repository not
    at hand."""
    recorded = (await reader.sources.revisions(info.id, [rev])).get(rev)
    if recorded is None:
        return Revision(rev, None, {})
    pairs = {TreeRule.EXPORT_IGNORE: recorded.root_export_ignore, TreeRule.RAW: recorded.root_raw}
    known = await reader.sources.trees([f for f in pairs.values() if f])
    return Revision(rev, None, {r: (f, known[f].nar_hash if f in known else None) for r, f in pairs.items()})


@contextlib.asynccontextmanager
async def _within(ctx: QueryContext, reader: Reader | None) -> AsyncIterator[Reader]:
    """``reader`` (a snapshot the caller holds), or a snapshot of its own."""
    if reader is not None:
        yield reader
        return
    async with ctx.store.reading() as fresh:
        yield fresh


async def join(ctx: QueryContext, info: RepositoryInfo, repo: Repository | None, revision: Revision,
               direct: bool, name_glob: str | None, reader: Reader | None = None) -> Joined:
    """The builds that used the revision's content — exactly (a form), partly (a subset or a
    superset of its files), or as one file a flat fixed output names — and the sources that link
    them. Asked in ``reader``'s snapshot when given (no git work then: ``repo`` is None), else in
    one snapshot before the git work and one after."""
    where = revision.places
    if revision.forms is None:  # only the roots, as recorded
        where = {}
        for rule, (form, _) in revision.roots.items():
            if form is not None:
                where.setdefault(form, []).append(("", rule))
    async with _within(ctx, reader) as snapshot:
        trees = await snapshot.sources.trees(where)
        hashes = {nar for _, nar in revision.roots.values() if nar} | {t.nar_hash for t in trees.values()}
        contents = await snapshot.builds.contents_with_forms(where)
        # sources too large for a form are known by their NAR hash alone
        contents += [c for c in await snapshot.builds.contents_with_hashes(hashes) if c.form is None]
        vendored = await snapshot.builds.contents_with_dirs(where)
        flat = await snapshot.builds.flat_fixed(revision.rev)
    sources = _sources(info, revision, where, contents, ctx.store_dir)
    by = recorded_by(info)
    # the revision's whole tree inside a larger source (a submodule filled in, a vendored copy); a
    # mere directory of it that is also somewhere in a source names nothing
    vendored = [(path, subdir, form) for path, subdir, form in vendored
                if any(d == "" for d, _ in where[form])]
    for path, subdir, form in vendored:
        nar_hash = trees[form].nar_hash if form in trees else ""
        rules = tuple(sorted({r.value for d, r in where[form] if d == ""}))
        sources.append(Source(f"{path}/{subdir}", nar_hash, None, rules, Match.EXACT, recorded_by=by))
    paths = {c.path for c in contents} | {path for path, _, _ in vendored}
    drv_ids: set[int] = set()
    if repo is not None and revision.forms is not None:
        partly = await _partial(ctx, info, repo, revision, paths)
        sources += [s for _, s in partly]
        paths |= {path for path, _ in partly}
        for item in flat:
            source = await ctx.git.run(repo, partial(flat_file, rev=revision.rev, item=item))
            if source is not None:
                sources.append(replace(source, recorded_by=by))
                drv_ids.add(item.drv_id)
    async with _within(ctx, reader) as snapshot:
        builds = await builds_using(snapshot, paths, hashes, direct, name_glob, drv_ids)
    return Joined(tuple(sources), builds)


async def _partial(ctx: QueryContext, info: RepositoryInfo, repo: Repository, revision: Revision,
                   exact: set[str]) -> list[tuple[str, Source]]:
    """Sources that hold a subset or a superset of the revision's files (or of one of its
    directories), found through their sampled files and verified file by file; bounded."""
    assert revision.forms is not None
    tree, commit = revision.forms.tree, bytes.fromhex(revision.rev)
    files = await ctx.git.run(repo, lambda git: git.forms.files(tree, "", TreeRule.RAW) or {})
    blobs = {blob for _, blob in files.values()}
    async with ctx.store.reading() as reader:
        sampled = await reader.builds.contents_sampled(blobs)
        known = await reader.builds.contents(sampled)
    deadline = time.monotonic() + GIT_BUDGET
    found: list[tuple[str, Source]] = []
    for path in sorted(sampled)[:CANDIDATES]:
        content = known.get(path)
        if path in exact or content is None or not content.identifying or time.monotonic() > deadline:
            continue
        if content.form is not None and await ctx.git.run(repo, partial(has_tree, form=content.form)):
            continue  # a revision (another one) has it exactly: it is not partly this one's
        copy = await asyncio.to_thread(manifest, path)
        if copy is None:
            continue  # not in the store any more: what it held cannot be compared now
        for prefix in prefixes(sampled[path], files) or [""]:
            relate = partial(best_relation, copy=copy, commit=commit, prefix=prefix)
            relation = await ctx.git.run(repo, relate)
            if relation is not None:
                rules, r = relation
                found.append((path, partial_source(path, content.nar_hash or "", prefix, rules, r,
                                                   recorded_by(info))))
                break
    return found


def has_tree(git: GitRepository, form: bytes) -> bool:
    """Whether ``form`` is a tree of the repository: some revision has that content exactly."""
    import pygit2

    return pygit2.Oid(raw=form) in git.repo.odb


def manifest(path: str) -> dict[str, tuple[bytes, bytes]] | None:
    """Every file of a store copy (bounded), or None when it cannot be read (gone, too large)."""
    try:
        return read_copy(path, MANIFEST_FILES, MANIFEST_BYTES, manifest=True).manifest
    except BadArchive:
        return None


def partial_source(path: str, nar_hash: str, prefix: str, rules: tuple[TreeRule, ...], r: Relation,
                   by: RecordedBy) -> Source:
    match = Match.FILTERED if r.filtered else Match.SUPERSET
    return Source(path, nar_hash, prefix.rstrip("/") or None, tuple(sorted(rule.value for rule in rules)),
                  match, FileCounts(r.agreeing, r.total) if r.filtered else None,
                  None if r.filtered else Extra(r.extra, r.git), by)


def flat_file(git: GitRepository, rev: str, item: FlatFixed) -> Source | None:
    """A flat fixed output that names one file of ``rev``: a match when the file there has the
    declared hash and could tell this repository from others (not empty, not a common file)."""
    try:
        tree = git.resolve(rev).tree
        entry = tree[item.path]
    except (BuildrefError, KeyError, ValueError):
        return None
    data = git.repo[entry.id].data if entry.type_str == "blob" else None
    if data is None or not distinctive_leaf(item.path.rsplit("/", 1)[-1].encode(), blob_id(data)):
        return None
    if Hash.of(HashAlgo.SHA256, data).sri != item.fixed_hash:
        return None
    return Source(item.output or item.path, item.fixed_hash, item.path, (TreeRule.RAW.value,), Match.FILTERED,
                  FileCounts(1, 1))


def _sources(info: RepositoryInfo, revision: Revision, where: dict[bytes, list[tuple[str, TreeRule]]],
             contents: Sequence[ContentRecord], store_dir: str) -> list[Source]:
    by = recorded_by(info)
    roots: dict[str, Source] = {}
    for rule, (form, nar_hash) in revision.roots.items():
        if form is None or nar_hash is None:
            continue
        path = source_path(Hash.parse(nar_hash, HashAlgo.SHA256), "source", store_dir=store_dir)
        old = roots.get(path)
        rules = tuple(sorted({*(old.rules if old else ()), rule.value}))
        roots[path] = Source(path, nar_hash, None, rules, Match.EXACT, recorded_by=by)
    found = dict(roots)
    for c in contents:
        if c.path in found:
            continue
        places = where.get(c.form, []) if c.form else [("", r) for r, (_, h) in revision.roots.items()
                                                       if h == c.nar_hash]
        subdir = min((subdir for subdir, _ in places), default="")  # one of them when the same form is in two
        found[c.path] = Source(c.path, c.nar_hash or "", subdir or None,
                               tuple(sorted({rule.value for s, rule in places if s == subdir})), Match.EXACT,
                               recorded_by=by)
    return list(found.values())


async def _resolve(ctx: QueryContext, reader: Reader, info: RepositoryInfo, repo: Repository | None,
                   ref: str, at: float | None) -> tuple[str, str]:
    """(ref as reported, rev): by git in the repository, or as recorded (``--at``, or when the
    repository is not at hand)."""
    if at is None and repo is not None:
        try:
            resolved = await ctx.git.run(repo, partial(resolve, spec=ref))
        except UnknownRevision:
            raise UnknownRevision(f"no revision {quoted(ref)} in repository {quoted(info.name)}") from None
        return resolved.ref or ref, resolved.rev
    when = at if at is not None else time.time()
    names = [ref] if ref.startswith("refs/") or ref == "HEAD" else [
        ref, f"refs/{ref}", f"refs/tags/{ref}", f"refs/heads/{ref}", f"refs/remotes/{ref}"]
    target = await reader.sources.ref_target(info.id, names, when)
    if target is not None:
        return target
    if _HEX_PREFIX.fullmatch(ref.lower()):
        revs = await reader.sources.revs_with_prefix(info.id, ref.lower())
        if len(revs) == 1:
            return ref, revs[0]
        if len(revs) > 1:
            raise UnknownRevision(f"'{ref}' is ambiguous: {len(revs)} recorded revisions start with it")
    raise UnknownRevision(f"no recorded ref or revision {quoted(ref)} (buildref record records refs)")


async def lookup(ctx: QueryContext, p: LookupParams) -> Lookup:
    async with ctx.store.reading() as reader:
        info = await recorded_repository(ctx, reader, p.repo)
        repo = at_hand(ctx, info)
        ref_name, rev = await _resolve(ctx, reader, info, repo, p.ref, p.at)
        if repo is None:  # all of it from the index: one snapshot, no git work in between
            revision = await recorded_revision(reader, info, rev)
            joined = await join(ctx, info, None, revision, p.direct, p.name, reader)
    if repo is not None:
        revision = await _revision(ctx, info, repo, rev)
        joined = await join(ctx, info, repo, revision, p.direct, p.name)
    fallback = None
    builds = await in_caches(ctx, joined.builds, p.cached)
    if not builds and repo is not None:
        fallback, builds = await _fallback(ctx, repo, rev, set(revision.places), p)
    return Lookup(repository=info.name, ref=ref_name, rev=rev, sources=joined.sources, builds=tuple(builds),
                  fallback=fallback)


async def in_caches(ctx: QueryContext, builds: list[MatchedBuild], cached: bool) -> list[MatchedBuild]:
    """``builds`` with the configured caches that hold them; with ``cached``, only those in the
    local store or in a configured cache."""
    if ctx.caches.configured and builds:
        builds = await ctx.caches.annotate(ctx.store, builds)
    return [b for b in builds if b.valid or b.caches] if cached else builds


async def _fallback(ctx: QueryContext, repo: Repository, rev: str, seen: set[bytes], p: LookupParams
                    ) -> tuple[Fallback | None, list[MatchedBuild]]:
    """The newest first-parent ancestor of ``rev`` that has a build, within bounds (depth, time).
    Ancestors are formed from git objects, not stored: a query never writes. Only the forms no
    revision looked at before had (``seen``: the tip's) are asked about: a build of a shared
    form would have been found already."""
    deadline = time.monotonic() + GIT_BUDGET
    ancestors = await ctx.git.run(repo, partial(first_parents, rev=rev, depth=FALLBACK_DEPTH))
    for behind, ancestor in enumerate(ancestors, start=1):
        if time.monotonic() > deadline:
            break
        oids = await ctx.git.run(repo, partial(unseen_forms, rev=ancestor, seen=seen))
        seen |= oids
        if not oids:
            continue
        async with ctx.store.reading() as reader:
            contents = await reader.builds.contents_with_forms(oids)
            hashes = {t.nar_hash for t in (await reader.sources.trees(oids)).values()}
            if not contents and not hashes:
                continue
            builds = await builds_using(reader, {c.path for c in contents}, hashes, p.direct, p.name)
        builds = await in_caches(ctx, builds, p.cached)
        if builds:
            return Fallback(ancestor, behind), builds
    return None, []
