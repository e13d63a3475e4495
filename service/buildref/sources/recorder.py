"""Recording git refs: where each ref points now (kept as a history of moves: the recorder decides
which refs moved) and the source store paths of every revision a ref reaches, computed from git
objects (``buildref record``, the watchers). Lookups borrow its git work, read-only."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from functools import partial

import structlog

from buildref.config import Limits, Repository
from buildref.diskspace import SpaceFloor
from buildref.errors import BuildrefError, Forbidden, StorageError, UnknownRevision, quoted
from buildref.git.forms import DirForm
from buildref.git.source import GitRepository
from buildref.git.tree_nar import TreeRule
from buildref.models import Recorded, RefChange
from buildref.process import mirror
from buildref.sources.access import trusted
from buildref.sources.gitwork import GitWork
from buildref.sources.locks import LockRecorder
from buildref.sources.repositories import Repositories
from buildref.store.api import RepositoryRecord, RevisionRecord, SourceUsage, Store, TreeRecord


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
                raise UnknownRevision(f"no ref {quoted(name)} in repository '{repo.path}'") from None
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


@dataclass(frozen=True, slots=True)
class RevisionForms:
    """A revision's directories as Nix copies them, under both rules."""

    rev: str
    commit_time: int
    tree: bytes
    directories: tuple[DirForm, ...]

    def root(self, rule: TreeRule) -> bytes | None:
        return next((d.form.oid for d in self.directories if d.subdir == "" and d.rule is rule), None)


def revision_forms(repo: GitRepository, rev: str) -> RevisionForms:
    commit = repo.resolve(rev)
    tree, data = commit.tree_id.raw, repo.commit_data(commit)
    dirs = [d for rule in (TreeRule.EXPORT_IGNORE, TreeRule.RAW)
            for d in repo.forms.directories(tree, rule, data)]
    return RevisionForms(str(commit.id), int(commit.commit_time), tree, tuple(dirs))


def new_trees(repo: GitRepository, revision: RevisionForms, known: set[bytes]) -> list[TreeRecord]:
    """Tree records (with NAR hashes) for the identifying forms of ``revision`` not ``known``."""
    found: dict[bytes, TreeRecord] = {}
    commit = repo.resolve(revision.rev)
    for d in revision.directories:
        oid = d.form.oid
        if oid in known or oid in found or not d.form.identifying:
            continue
        digest = repo.digest(commit, d.subdir, d.rule)
        found[oid] = TreeRecord(oid, d.tree if d.tree != oid else None, digest.nar_hash.sri, digest.nar_size,
                                d.form.files, True)
    return list(found.values())


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


class _Quota:
    """What one user's repositories may take (``limits.user_*``), checked as a record goes: work
    stops as soon as the rows it would add go over, before anything is written."""

    def __init__(self, limits: Limits, recorded_by: str) -> None:
        self._limits = limits
        self._who = recorded_by
        self._rows = 0

    def start(self, usage: SourceUsage, new_repository: bool) -> None:
        if new_repository and usage.repositories >= self._limits.user_repositories:
            raise Forbidden(f"uid {self._who} has {usage.repositories} repositories recorded, the most a user"
                            f" may (limits.user_repositories)")
        self._rows = usage.rows

    def add(self, rows: int) -> None:
        self._rows += rows
        if self._rows > self._limits.user_rows:
            raise Forbidden(f"recording this would take uid {self._who}'s repositories past"
                            f" {self._limits.user_rows} index rows (limits.user_rows); nothing was recorded")


class RefRecorder:
    def __init__(self, store: Store, repositories: Repositories, git: GitWork, locks: LockRecorder,
                 limits: Limits, space: SpaceFloor, builder: str | None = None) -> None:
        self._store = store
        self._builder = builder
        self._repositories = repositories
        self._git = git
        self._locks = locks
        self._limits = limits
        self._space = space
        self._recording: dict[str, asyncio.Lock] = {}  # one pass per repository at a time
        self._log = structlog.get_logger("buildref.refs")

    async def record(self, spec: str, refs: tuple[str, ...] | None, uid: int | None = None,
                     fetch: bool = False) -> Recorded:
        """Record ``spec``'s refs; with ``fetch``, a repository with a URL is fetched first (a URL
        given as ``spec`` is mirrored under the state directory). ``uid``: who asks (None: the
        service itself, for a configured repository)."""
        repo = self._repositories.resolve(spec, uid)
        recorded_by = self._repositories.recorded_by(repo, uid)
        quota = None if trusted(uid) else _Quota(self._limits, recorded_by)
        self._space.check(0, f"recording {quoted(repo.name)}")
        if repo.url is not None and (fetch or not os.path.isdir(repo.path)):
            await mirror(repo.url, repo.path)
        async with self._recording.setdefault(repo.name, asyncio.Lock()):
            return await self._record(repo, refs, recorded_by, quota)

    async def _record(self, repo: Repository, refs: tuple[str, ...] | None, recorded_by: str,
                      quota: _Quota | None) -> Recorded:
        tips = await self._git.run(repo, partial(list_refs, wanted=refs))
        revs = sorted({rev for rev, _ in tips.values()})
        async with self._store.reading() as reader:
            info = await reader.sources.repository(repo.name)
            known = await reader.sources.revisions(info.id, revs) if info else {}
            current = await reader.sources.current_refs(info.id) if info else {}
            if quota is not None:
                quota.start(await reader.sources.usage(recorded_by), new_repository=info is None)
                quota.add(len(tips))  # ref moves, at most one per ref
        # revisions new to the index, and ones recorded before their forms were kept
        fresh = [rev for rev in revs if rev not in known or known[rev].root_export_ignore is None]
        revisions: list[RevisionRecord] = []
        forms: set[bytes] = set()
        trees: list[TreeRecord] = []
        for rev in fresh:
            computed = await self._git.run(repo, partial(revision_forms, rev=rev))
            oids = {d.form.oid for d in computed.directories if d.form.identifying}
            async with self._store.reading() as reader:
                have = set(await reader.sources.trees(oids)) | {t.form for t in trees}
            trees += await self._git.run(repo, partial(new_trees, revision=computed, known=have))
            if quota is not None:
                quota.add(1 + len(oids - forms))  # the revision, and its directories' links
            forms |= oids
            revisions.append(RevisionRecord(rev, computed.commit_time, computed.root(TreeRule.EXPORT_IGNORE),
                                            computed.root(TreeRule.RAW)))
        for rev in fresh:
            text = await self._git.run(repo, partial(flake_lock, rev=rev))
            if text is not None:  # a flake.lock at this revision
                try:
                    await self._locks.record_text(f"{repo.name}@{rev}:flake.lock", text)
                except StorageError:
                    raise
                except BuildrefError as e:  # a broken flake.lock in history must not stop the refs
                    self._log.warning("flake.lock not recorded", repository=repo.name, rev=rev, error=str(e))
        targets = {ref: rev for ref, (rev, _) in tips.items()}
        moves = ref_moves(current, targets, complete=refs is None)
        record = RepositoryRecord(repo.name, repo.path, repo.url, recorded_by, self._builder)
        rows = len(revisions) + len(forms) + len(trees) + len(moves)
        self._space.check(rows, f"recording {quoted(repo.name)}")
        await self._store.sources.record_revisions(record, revisions, forms, trees, moves)
        return Recorded(repository=repo.name, refs={ref: rev for ref, (rev, _) in sorted(tips.items())},
                        moved=tuple(moves), revisions_indexed=len(revisions), sources_indexed=len(trees))
