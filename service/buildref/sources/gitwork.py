"""Git work off the event loop: repositories are opened once (their tree memo makes the next
revision cheap) and used by one thread at a time (a pygit2 repository is not for two at once)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from buildref.config import Repository
from buildref.git.source import GitRepository

T = TypeVar("T")


class GitWork:
    def __init__(self, store_dir: str) -> None:
        self._store_dir = store_dir
        self._open: dict[str, GitRepository] = {}
        self._lock = asyncio.Lock()

    def _repository(self, repo: Repository) -> GitRepository:
        git = self._open.get(repo.path)
        if git is None:
            git = self._open[repo.path] = GitRepository(repo.path, self._store_dir)
        return git

    async def run(self, repo: Repository, work: Callable[[GitRepository], T]) -> T:
        """``work`` on ``repo``, opened if needed, in a thread. A thread cannot be stopped: when
        the caller is cancelled, the lock is held until the thread is done, then the
        cancellation goes on."""
        async with self._lock:
            thread = asyncio.ensure_future(asyncio.to_thread(lambda: work(self._repository(repo))))
            try:
                return await asyncio.shield(thread)
            except asyncio.CancelledError:
                await asyncio.wait([thread])
                raise

    def forget(self, repo: Repository) -> None:
        """Drop an opened repository (it moved, or vanished): the next use opens it again."""
        self._open.pop(repo.path, None)
