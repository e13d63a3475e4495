"""Git work off the event loop: repositories are opened once (their tree and form memos make the
next revision cheap) and each is used by one thread at a time (a pygit2 repository is not for two
at once); different repositories are worked on in parallel.

A user's repository (one with an ``owner``) is checked as that user before each piece of work and
again after it (:mod:`buildref.sources.access`): work during which anything moved is thrown away
and done again on a fresh opening, a few times at most."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from buildref.config import Repository
from buildref.errors import BuildrefError, Forbidden, GitError, UnknownRevision, quoted
from buildref.git.history import History
from buildref.git.source import GitRepository
from buildref.sources.access import (
    Credentials,
    Denied,
    Fingerprint,
    GitDirs,
    locate,
    not_yours,
    scan,
    unchanged,
)

T = TypeVar("T")

ATTEMPTS = 3  # pieces of work on a user's repository that keeps changing under it, before giving up


class Guard:
    """What a user's repository looked like when last checked as its owner."""

    def __init__(self, repo: Repository, owner: int) -> None:
        self._repo = repo
        self._who = Credentials.of(owner)
        self.dirs: GitDirs | None = None
        self._print: Fingerprint | None = None

    def check(self) -> Fingerprint:
        """The fingerprint to compare after the work: the last one if nothing moved, else a new one
        from a full check (``dirs`` may change). Raises :class:`Forbidden`."""
        if self._print is None or not unchanged(self._print):
            self._print = self.dirs = None
            try:
                dirs = locate(self._repo.path, self._who)
            except Denied:
                raise not_yours(self._repo.name) from None
            self._print = scan(dirs, self._who)
            self.dirs = dirs
        return self._print


GIT_THREADS = 2  # git work at once, whoever asks: each thread competes with the event loop for the GIL


class GitWork:
    def __init__(self, store_dir: str) -> None:
        self._store_dir = store_dir
        self._threads = ThreadPoolExecutor(GIT_THREADS, thread_name_prefix="git")
        self._open: dict[str, tuple[GitRepository, History]] = {}
        self._guards: dict[tuple[str, int], Guard] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _repository(self, repo: Repository, path: str | None = None) -> tuple[GitRepository, History]:
        """``repo`` opened (at ``path``, its checked git directory, when given)."""
        found = self._open.get(repo.path)
        if found is not None and path is not None and found[0].path != path:
            found = None
        if found is None:
            git = GitRepository(path or repo.path, self._store_dir)
            found = self._open[repo.path] = (git, History(git))
        return found

    def _work(self, repo: Repository, work: Callable[[GitRepository, History], T]) -> T:
        """In a worker thread, with the repository's lock held."""
        if repo.owner is None:
            return work(*self._repository(repo))
        guard = self._guards.get((repo.path, repo.owner))
        if guard is None:
            guard = self._guards[repo.path, repo.owner] = Guard(repo, repo.owner)
        for _ in range(ATTEMPTS):
            before = guard.check()
            assert guard.dirs is not None  # set by a check that passed
            # the git directory itself is opened, never the path again: a .git file cannot move it
            try:
                result = work(*self._repository(repo, guard.dirs.git_dir))
            except Exception:
                if unchanged(before):
                    raise
            else:
                if unchanged(before):
                    return result
            # what was read (an error's message too) may come from elsewhere: never answered
            self.forget(repo)  # libgit2 may have cached what it read meanwhile
        raise GitError(f"{quoted(repo.name)} kept changing while it was read; try again")

    async def run(self, repo: Repository, work: Callable[[GitRepository], T]) -> T:
        """``work`` on ``repo``, opened if needed, in a thread."""
        return await self.search(repo, lambda git, _: work(git))

    async def search(self, repo: Repository, work: Callable[[GitRepository, History], T]) -> T:
        """``work`` on ``repo`` and its history, in a thread. A thread cannot be stopped: when the
        caller is cancelled, the repository stays locked until the thread is done (work is bounded
        by deadlines), then the cancellation goes on."""
        async with self._locks.setdefault(repo.path, asyncio.Lock()):
            loop = asyncio.get_running_loop()
            thread = asyncio.ensure_future(loop.run_in_executor(self._threads, self._work, repo, work))
            try:
                return await asyncio.shield(thread)
            except asyncio.CancelledError:
                await asyncio.wait([thread])
                raise
            except Exception as e:
                # git, pygit2 or the file system failed, or the repository is no longer the caller's:
                # it may have moved, vanished or been replaced; open it afresh next time (a revision
                # it lacks says nothing of that, nor does another error of buildref's own, such as a
                # bound on the work)
                stale = isinstance(e, GitError | Forbidden) or not isinstance(e, BuildrefError)
                if stale and not isinstance(e, UnknownRevision):
                    self.forget(repo)
                raise

    def close(self) -> None:
        """No more work; what runs finishes in its thread."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    def forget(self, repo: Repository) -> None:
        self._open.pop(repo.path, None)
