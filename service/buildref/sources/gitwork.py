"""Git work off the event loop: repositories are opened once (their tree and form memos make the
next revision cheap) and each is used by one thread at a time (a pygit2 repository is not for two
at once); different repositories are worked on in parallel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from buildref.config import Repository
from buildref.errors import BuildrefError, GitError, UnknownRevision
from buildref.git.history import History
from buildref.git.source import GitRepository

T = TypeVar("T")


class GitWork:
    def __init__(self, store_dir: str) -> None:
        self._store_dir = store_dir
        self._open: dict[str, tuple[GitRepository, History]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _repository(self, repo: Repository) -> tuple[GitRepository, History]:
        found = self._open.get(repo.path)
        if found is None:
            git = GitRepository(repo.path, self._store_dir)
            found = self._open[repo.path] = (git, History(git))
        return found

    async def run(self, repo: Repository, work: Callable[[GitRepository], T]) -> T:
        """``work`` on ``repo``, opened if needed, in a thread."""
        return await self.search(repo, lambda git, _: work(git))

    async def search(self, repo: Repository, work: Callable[[GitRepository, History], T]) -> T:
        """``work`` on ``repo`` and its history, in a thread. A thread cannot be stopped: when the
        caller is cancelled, the repository stays locked until the thread is done (work is bounded
        by deadlines), then the cancellation goes on."""
        async with self._locks.setdefault(repo.path, asyncio.Lock()):
            thread = asyncio.ensure_future(asyncio.to_thread(lambda: work(*self._repository(repo))))
            try:
                return await asyncio.shield(thread)
            except asyncio.CancelledError:
                await asyncio.wait([thread])
                raise
            except Exception as e:
                # git, pygit2 or the file system failed: the repository may have moved, vanished or
                # been replaced; open it afresh next time (a revision it lacks says nothing of that,
                # nor does an error of buildref's own, such as a bound on the work)
                ours = isinstance(e, BuildrefError) and not isinstance(e, GitError)
                if not ours and not isinstance(e, UnknownRevision):
                    self.forget(repo)
                raise

    def forget(self, repo: Repository) -> None:
        self._open.pop(repo.path, None)
