"""Watching configured repositories: every change to ``HEAD``, ``packed-refs`` or ``refs/`` makes
the service record the repository's refs (debounced: a push that moves ten refs is one pass)."""

from __future__ import annotations

import asyncio
import os

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver

from buildref.config import Repository
from buildref.errors import BuildrefError, StorageError
from buildref.sources.locks import LockRecorder
from buildref.sources.recorder import RefRecorder

DEBOUNCE = 0.2  # seconds of quiet before a pass
RETRY_DELAY = 1.0  # seconds before a pass the index could not take is tried again, doubled each
MAX_RETRY_DELAY = 30.0  # time up to this

Dirty = asyncio.Queue[tuple[str, str]]  # ("repo", name) or ("lock", path)


def git_dir(path: str) -> str:
    """Where a repository keeps HEAD and refs: ``path/.git`` (a directory, or a ``gitdir:`` file of a
    worktree or submodule), or ``path`` itself for a bare repository."""
    dot_git = os.path.join(path, ".git")
    if os.path.isdir(dot_git):
        return dot_git
    if os.path.isfile(dot_git):
        with open(dot_git) as f:
            line = f.read().strip()
        if line.startswith("gitdir:"):
            return os.path.normpath(os.path.join(path, line.removeprefix("gitdir:").strip()))
    return path


def _is_ref_change(git: str, changed: str) -> bool:
    rel = os.path.relpath(changed, git)
    return rel in ("HEAD", "packed-refs") or rel == "refs" or rel.startswith("refs" + os.sep)


class _RefChanges(FileSystemEventHandler):
    """Runs in watchdog's thread: hands the repository's name to the loop when a ref file changes."""

    def __init__(self, git: str, name: str, loop: asyncio.AbstractEventLoop,
                 dirty: Dirty) -> None:
        self._git, self._name, self._loop, self._dirty = git, name, loop, dirty

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
        if any(p and _is_ref_change(self._git, p) for p in paths):
            self._loop.call_soon_threadsafe(self._dirty.put_nowait, ("repo", self._name))


class _FileChanges(FileSystemEventHandler):
    def __init__(self, path: str, loop: asyncio.AbstractEventLoop, dirty: Dirty) -> None:
        self._path, self._loop, self._dirty = path, loop, dirty

    def on_any_event(self, event: FileSystemEvent) -> None:
        if self._path in (str(event.src_path), str(getattr(event, "dest_path", "") or "")):
            self._loop.call_soon_threadsafe(self._dirty.put_nowait, ("lock", self._path))


class RepoWatcher:
    def __init__(self, repositories: tuple[Repository, ...], recorder: RefRecorder,
                 locks: LockRecorder) -> None:
        self._repos = repositories
        self._recorder = recorder
        self._locks = locks
        self._dirty: Dirty = asyncio.Queue()  # ("repo", name) or ("lock", path)
        self._delays: dict[tuple[str, str], float] = {}  # passes waiting for the index to be back
        self._log = structlog.get_logger("buildref.watch")

    def watch(self, observer: BaseObserver, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``observer`` (the service's one watchdog thread) report ref and lock file changes."""
        for repo in self._repos:
            git = git_dir(repo.path)
            if not os.path.isdir(git):
                self._log.error("repository not found; not watched", repository=repo.name, path=repo.path)
                continue
            observer.schedule(_RefChanges(git, repo.name, loop, self._dirty), git, recursive=True)
        for path in self._locks.paths:
            directory = os.path.dirname(os.path.abspath(path))
            if os.path.isdir(directory):
                observer.schedule(_FileChanges(os.path.abspath(path), loop, self._dirty), directory)

    async def run(self) -> None:
        """Record every configured repository now, then each one again after its refs change."""
        for repo in self._repos:
            self._dirty.put_nowait(("repo", repo.name))
        for path in self._locks.paths:
            self._dirty.put_nowait(("lock", os.path.abspath(path)))
        while True:
            names = {await self._dirty.get()}
            await asyncio.sleep(DEBOUNCE)
            while not self._dirty.empty():
                names.add(self._dirty.get_nowait())
            for kind, key in sorted(names):
                try:
                    if kind == "lock":
                        await self._locks.record_file(key)
                    else:
                        await self._record(key)
                except StorageError as e:  # the index is away: the pass is made again, later
                    self._retry((kind, key), str(e))
                    continue
                self._delays.pop((kind, key), None)

    def _retry(self, item: tuple[str, str], error: str) -> None:
        delay = self._delays.get(item, RETRY_DELAY)
        self._delays[item] = min(delay * 2, MAX_RETRY_DELAY)
        self._log.warning("not recorded; will retry", what=item[0], name=item[1], error=error, seconds=delay)
        asyncio.get_running_loop().call_later(delay, self._dirty.put_nowait, item)

    async def _record(self, name: str) -> None:
        try:
            result = await self._recorder.record(name, None)
        except StorageError:
            raise
        except BuildrefError as e:
            self._log.error("recording refs failed", repository=name, error=str(e))
            return
        if result.moved:
            self._log.info("refs moved", repository=name, moved=[m.to_json() for m in result.moved],
                           sources=result.sources_indexed)
