"""Recording git refs: where each ref points now (kept as a history of moves) and the source store
paths of every revision a ref reaches, computed from git objects (``buildref record``)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from typing import Any

import structlog

from buildref.config import Repository
from buildref.db import Database, RevisionRow, SourceRow
from buildref.errors import BuildrefError, GitError, UnknownRevision
from buildref.git.source import GitRepository
from buildref.locks import LockRecorder
from buildref.process import mirror


def _is_url(spec: str) -> bool:
    return "://" in spec or bool(re.fullmatch(r"[\w.-]+@[\w.-]+:.+", spec))


class UnknownRepository(GitError):
    """A repository that is neither configured nor a readable path."""


def _list_refs(repo: GitRepository, wanted: list[str] | None) -> dict[str, tuple[str, int]]:
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


def _flake_lock(repo: GitRepository, rev: str) -> bytes | None:
    """The ``flake.lock`` at the root of a revision, if it has one."""
    tree = repo.resolve(rev).tree
    entry = tree["flake.lock"] if "flake.lock" in tree else None  # noqa: SIM401 - a pygit2 Tree has no get
    return entry.data if entry is not None and entry.type_str == "blob" else None


def _sources(repo: GitRepository, rev: str) -> tuple[SourceRow, ...]:
    commit = repo.resolve(rev)
    return tuple(SourceRow(s.subdir, s.rule.value, s.nar_hash.sri, s.store_path)
                 for s in repo.tree_sources(commit))


class RefRecorder:
    def __init__(self, db: Database, repositories: tuple[Repository, ...], store_dir: str,
                 mirrors: str, locks: LockRecorder | None = None) -> None:
        self._db = db
        self._locks = locks
        self._mirrors = mirrors
        self._configured = {r.name: r for r in repositories}
        self._store_dir = store_dir
        self._open: dict[str, GitRepository] = {}  # kept open: their tree memo makes the next tip cheap
        self._lock = asyncio.Lock()  # a GitRepository is not for two threads at once
        self._log = structlog.get_logger("buildref.refs")

    def mirror_path(self, url: str) -> str:
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))[:40]
        return os.path.join(self._mirrors, f"{digest}-{base or 'repo'}.git")

    def repository(self, spec: str, uid: int | None = None) -> Repository:
        """A configured name, or the path of a repository (named by its absolute path). With
        ``uid`` (who asks), an unconfigured path must belong to that user, or the user be root:
        the service can read more than its clients, and the refs it records are shown to anyone."""
        configured = self._configured.get(spec)
        if configured is not None:
            return configured
        for repo in self._configured.values():
            if os.path.abspath(spec) == os.path.abspath(repo.path):
                return repo
        if _is_url(spec):
            for repo in self._configured.values():
                if repo.url == spec:
                    return repo
            if uid not in (None, 0):
                raise UnknownRepository(f"'{spec}' is not configured: only root can have a URL mirrored")
            return Repository(spec, self.mirror_path(spec), spec)
        if spec.startswith("/") and os.path.isdir(spec):
            path = os.path.abspath(spec)
            if uid not in (None, 0) and os.stat(path).st_uid != uid:
                raise UnknownRepository(f"'{path}' is not configured and not yours: only its owner or root "
                                        "can have it recorded")
            return Repository(path, path)
        raise UnknownRepository(f"no repository '{spec}': give a configured name or an absolute path")

    def _git(self, repo: Repository) -> GitRepository:
        git = self._open.get(repo.path)
        if git is None:
            git = self._open[repo.path] = GitRepository(repo.path, self._store_dir)
        return git

    async def record(self, spec: str, refs: list[str] | None, uid: int | None = None,
                     fetch: bool = False) -> dict[str, Any]:
        """Record ``spec``'s refs; with ``fetch``, a repository with a URL is fetched first (a URL
        given as ``spec`` is mirrored under the state directory)."""
        repo = self.repository(spec, uid)
        if repo.url is not None and (fetch or not os.path.isdir(repo.path)):
            await mirror(repo.url, repo.path)
        async with self._lock:
            git = await asyncio.to_thread(self._git, repo)
            tips = await asyncio.to_thread(_list_refs, git, refs)
            revs = sorted({rev for rev, _ in tips.values()})
            known = await self._db.revisions_with_sources(repo.name, revs)
            times = {rev: t for rev, t in tips.values()}
            new = [RevisionRow(rev, times[rev], await asyncio.to_thread(_sources, git, rev))
                   for rev in revs if rev not in known]
            locks = {r.rev: await asyncio.to_thread(_flake_lock, git, r.rev) for r in new}
        for rev, text in locks.items():
            if text is not None and self._locks is not None:  # a flake.lock at this revision
                try:
                    await self._locks.record_text(f"{repo.name}@{rev}:flake.lock", text)
                except BuildrefError as e:  # a broken flake.lock in history must not stop the refs
                    self._log.warning("flake.lock not recorded", repository=repo.name, rev=rev, error=str(e))
        targets = {ref: rev for ref, (rev, _) in tips.items()}
        moves = await self._db.record_refs(repo.name, repo.path, repo.url, targets, new,
                                           complete=refs is None)
        return {
            "repository": repo.name,
            "refs": {ref: rev for ref, (rev, _) in sorted(tips.items())},
            "moved": [{"ref": ref, "rev": rev} for ref, rev in moves],
            "revisionsIndexed": len(new),
            "sourcesIndexed": sum(len(r.sources) for r in new),
        }

    async def first_parents(self, spec: str, rev: str, depth: int) -> list[str]:
        """Up to ``depth`` first-parent ancestors of ``rev``, nearest first."""
        repo = self.repository(spec)

        def walk(git: GitRepository) -> list[str]:
            found: list[str] = []
            commit = git.resolve(rev)
            while commit.parents and len(found) < depth:
                commit = commit.parents[0]
                found.append(str(commit.id))
            return found

        async with self._lock:
            git = await asyncio.to_thread(self._git, repo)
            return await asyncio.to_thread(walk, git)

    async def sources_of(self, spec: str, rev: str) -> list[tuple[str, str, str, str]]:
        """(subdir, rule, narHash, storePath) of a revision, computed and kept if not yet recorded."""
        repo = self.repository(spec)
        if not await self._db.revisions_with_sources(repo.name, [rev]):
            async with self._lock:
                git = await asyncio.to_thread(self._git, repo)
                commit_time = int((await asyncio.to_thread(git.resolve, rev)).commit_time)
                row = RevisionRow(rev, commit_time, await asyncio.to_thread(_sources, git, rev))
            await self._db.record_refs(repo.name, repo.path, repo.url, {}, [row], complete=False)
        repo_id = await self._db.repository_id(repo.name)
        assert repo_id is not None
        return await self._db.revision_sources(repo_id, rev)

    async def history(self, spec: str) -> list[dict[str, Any]]:
        repo = self.repository(spec)
        history = await self._db.ref_history(repo.name)
        if history is None:
            raise UnknownRepository(f"repository '{repo.name}' has not been recorded yet (buildref record)")
        return history
