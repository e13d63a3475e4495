"""Recording git refs: where each ref points now (kept as a history of moves: the recorder decides
which refs moved) and the source store paths of every revision a ref reaches, computed from git
objects (``buildref record``, the watchers). Lookups borrow its git work, read-only."""

from __future__ import annotations

import asyncio
import os
from functools import partial

import structlog

from buildref.config import Repository
from buildref.errors import BuildrefError, UnknownRevision
from buildref.git.source import GitRepository
from buildref.models import Recorded, RefChange
from buildref.process import mirror
from buildref.sources.gitwork import GitWork
from buildref.sources.locks import LockRecorder
from buildref.sources.repositories import Repositories
from buildref.store.api import RepositoryRecord, RevisionRecord, SourceRecord, Store


def list_refs(repo: GitRepository, wanted: tuple[str, ...] | None) -> dict[str, tuple[str, int]]:
    """ref name -> (commit, commit time): every ref and HEAD, or the ones ``wanted`` (names git
    would understand: ``main``, ``v1``, ``refs/tags/v1``, ``HEAD``)."""
    import pygit2

    git = repo.repo
    names: list[str] = []
    if wanted is None:
        names = [n for n in git.references if n.startswith("refs/")]
        if not git.head_is_unborn:
            names.append("HEAD")
    else:
        for name in wanted:
            if name == "HEAD":
                names.append(name)
                continue
            try:
                names.append(git.lookup_reference_dwim(name).name)
            except (KeyError, pygit2.InvalidSpecError, pygit2.GitError):
                raise UnknownRevision(f"no ref '{name}' in repository '{repo.path}'") from None
    found = {}
    for name in names:
        try:
            commit = repo.resolve(name)
        except UnknownRevision:
            if wanted is not None:
                raise
            continue  # a ref to something that is not a commit (a tag of a blob): not a source
        found[name] = (str(commit.id), int(commit.commit_time))
    return found


def flake_lock(repo: GitRepository, rev: str) -> bytes | None:
    """The ``flake.lock`` at the root of a revision, if it has one."""
    tree = repo.resolve(rev).tree
    entry = tree["flake.lock"] if "flake.lock" in tree else None  # noqa: SIM401 - a pygit2 Tree has no get
    return entry.data if entry is not None and entry.type_str == "blob" else None


def revision_sources(repo: GitRepository, rev: str) -> tuple[SourceRecord, ...]:
    commit = repo.resolve(rev)
    return tuple(SourceRecord(s.subdir, s.rule.value, s.nar_hash.sri, s.store_path)
                 for s in repo.tree_sources(commit))


def first_parents(repo: GitRepository, rev: str, depth: int) -> list[str]:
    """Up to ``depth`` first-parent ancestors of ``rev``, nearest first."""
    found: list[str] = []
    commit = repo.resolve(rev)
    while commit.parents and len(found) < depth:
        commit = commit.parents[0]
        found.append(str(commit.id))
    return found


def ref_moves(current: dict[str, str | None], targets: dict[str, str], complete: bool) -> list[RefChange]:
    """The moves that take the recorded refs (``current``) to ``targets``; with ``complete``
    (every ref was listed), refs no longer there are deleted."""
    moves = [RefChange(ref, rev) for ref, rev in sorted(targets.items()) if current.get(ref) != rev]
    if complete:
        moves += [RefChange(ref, None) for ref, rev in sorted(current.items())
                  if rev is not None and ref not in targets]
    return moves


class RefRecorder:
    def __init__(self, store: Store, repositories: Repositories, git: GitWork, locks: LockRecorder) -> None:
        self._store = store
        self._repositories = repositories
        self._git = git
        self._locks = locks
        self._recording: dict[str, asyncio.Lock] = {}  # one pass per repository at a time
        self._log = structlog.get_logger("buildref.refs")

    async def record(self, spec: str, refs: tuple[str, ...] | None, uid: int | None = None,
                     fetch: bool = False) -> Recorded:
        """Record ``spec``'s refs; with ``fetch``, a repository with a URL is fetched first (a URL
        given as ``spec`` is mirrored under the state directory)."""
        repo = self._repositories.resolve(spec, uid)
        if repo.url is not None and (fetch or not os.path.isdir(repo.path)):
            await mirror(repo.url, repo.path)
        async with self._recording.setdefault(repo.name, asyncio.Lock()):
            return await self._record(repo, refs)

    async def _record(self, repo: Repository, refs: tuple[str, ...] | None) -> Recorded:
        tips = await self._git.run(repo, partial(list_refs, wanted=refs))
        revs = sorted({rev for rev, _ in tips.values()})
        async with self._store.reading() as reader:
            repo_id = await reader.sources.repository_id(repo.name)
            known = await reader.sources.revisions_with_sources(repo_id, revs) if repo_id else set()
            current = await reader.sources.current_refs(repo_id) if repo_id else {}
        times = {rev: t for rev, t in tips.values()}
        new = []
        for rev in revs:
            if rev not in known:
                sources = await self._git.run(repo, partial(revision_sources, rev=rev))
                new.append(RevisionRecord(rev, times[rev], sources))
        for revision in new:
            text = await self._git.run(repo, partial(flake_lock, rev=revision.rev))
            if text is not None:  # a flake.lock at this revision
                try:
                    await self._locks.record_text(f"{repo.name}@{revision.rev}:flake.lock", text)
                except BuildrefError as e:  # a broken flake.lock in history must not stop the refs
                    self._log.warning("flake.lock not recorded", repository=repo.name, rev=revision.rev,
                                      error=str(e))
        targets = {ref: rev for ref, (rev, _) in tips.items()}
        moves = ref_moves(current, targets, complete=refs is None)
        record = RepositoryRecord(repo.name, repo.path, repo.url)
        await self._store.sources.record_revisions(record, new, moves)
        return Recorded(repository=repo.name, refs={ref: rev for ref, (rev, _) in sorted(tips.items())},
                        moved=tuple(moves), revisions_indexed=len(new),
                        sources_indexed=sum(len(r.sources) for r in new))

    async def first_parents(self, repo: Repository, rev: str, depth: int) -> list[str]:
        return await self._git.run(repo, partial(first_parents, rev=rev, depth=depth))

    async def sources_of(self, repo: Repository, rev: str) -> tuple[SourceRecord, ...]:
        """A revision's sources, computed from git objects and not stored (queries never write)."""
        return await self._git.run(repo, partial(revision_sources, rev=rev))
