"""Watching configured repositories: every change to ``HEAD``, ``packed-refs`` or ``refs/`` makes
the service record the repository's refs (debounced: a push that moves ten refs is one pass).

A watched repository belongs to someone else, who may move it, delete its refs or replace it at any
time: nothing that happens to it stops the service. A recording that fails, however it fails, is
logged and tried again later (backing off); every :data:`RESCAN` seconds each watched directory is
looked at again, so that one that vanished stops being watched, and one that appears (missing at
start, moved back, cloned afresh) is watched and recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

import pygit2
import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver, ObservedWatch

from buildref.config import Repository
from buildref.errors import BuildrefError, IndexLost
from buildref.sources.locks import LockRecorder
from buildref.sources.recorder import RefRecorder

DEBOUNCE = 0.2  # seconds of quiet before a pass
RESCAN = 2.0  # seconds between looks at every watched directory (a stat each)
RETRY_FIRST = 1.0  # seconds before a failed recording is tried again; doubled each time it fails
RETRY_MAX = 60.0

Key = tuple[str, str]  # ("repo", name) or ("lock", path)
Dirty = asyncio.Queue[Key]
FileId = tuple[int, int]  # (st_dev, st_ino): the same path may come back as another directory


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

    def __init__(self, git: str, key: Key, loop: asyncio.AbstractEventLoop, dirty: Dirty) -> None:
        self._git, self._key, self._loop, self._dirty = git, key, loop, dirty

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
        if any(p and _is_ref_change(self._git, p) for p in paths):
            self._loop.call_soon_threadsafe(self._dirty.put_nowait, self._key)


class _FileChanges(FileSystemEventHandler):
    def __init__(self, path: str, key: Key, loop: asyncio.AbstractEventLoop, dirty: Dirty) -> None:
        self._path, self._key, self._loop, self._dirty = path, key, loop, dirty

    def on_any_event(self, event: FileSystemEvent) -> None:
        if self._path in (str(event.src_path), str(getattr(event, "dest_path", "") or "")):
            self._loop.call_soon_threadsafe(self._dirty.put_nowait, self._key)


@dataclass(frozen=True, slots=True)
class _Watched:
    directory: str
    identity: FileId
    watch: ObservedWatch


@dataclass(frozen=True, slots=True)
class _Seen:
    """A key's directory as one rescan found it: ``identity`` None when it is not there."""

    directory: str
    recursive: bool
    identity: FileId | None
    error: str | None = None


def _identity(directory: str) -> FileId | None:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if os.path.isdir(directory) else None


class RepoWatcher:
    def __init__(self, repositories: tuple[Repository, ...], recorder: RefRecorder,
                 locks: LockRecorder, observer: BaseObserver) -> None:
        """``observer``: the service's one watchdog thread, which reports ref and lock file
        changes from :meth:`run` on (a directory is scheduled only once it is seen to exist:
        watchdog fails to start a watch of a missing one)."""
        self._repos = {repo.name: repo for repo in repositories}
        self._recorder = recorder
        self._locks = locks
        self._keys: list[Key] = ([("repo", name) for name in self._repos]
                                 + [("lock", os.path.abspath(path)) for path in locks.paths])
        self._dirty: Dirty = asyncio.Queue()
        self._observer = observer
        self._watched: dict[Key, _Watched] = {}  # touched only by the rescan, one at a time
        self._missing: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._retries: dict[Key, asyncio.TimerHandle] = {}
        self._log = structlog.get_logger("buildref.watch")

    async def run(self) -> None:
        """Watch and record every configured repository and lock file now, then each one again
        after it changes, after a failed recording (backing off), and after its directory
        reappears. Raises only :class:`IndexLost` (the service must stop)."""
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._rescan, loop)
        for key in self._keys:
            self._dirty.put_nowait(key)
        while True:
            keys: set[Key] = set()
            with contextlib.suppress(TimeoutError):
                keys.add(await asyncio.wait_for(self._dirty.get(), RESCAN))
                await asyncio.sleep(DEBOUNCE)
            while not self._dirty.empty():
                keys.add(self._dirty.get_nowait())
            # watchdog's unschedule joins a thread: not on the loop
            keys |= await asyncio.to_thread(self._rescan, loop)
            for key in sorted(keys):
                await self._record(key)

    def _directory(self, key: Key) -> tuple[str, bool]:
        """The directory watched for ``key``, and whether recursively."""
        kind, name = key
        if kind == "lock":
            return os.path.dirname(name), False
        return git_dir(self._repos[name].path), True

    def _rescan(self, loop: asyncio.AbstractEventLoop) -> set[Key]:
        """In a thread: drop the watches of directories that vanished or were replaced, then watch
        every directory that exists and is not watched (their events go to ``loop``). Returns the
        keys watched again (their directory reappeared), to be recorded."""
        seen: dict[Key, _Seen] = {}
        for key in self._keys:
            try:
                directory, recursive = self._directory(key)
            except OSError as e:  # a .git file that cannot be read
                seen[key] = _Seen("", False, None, str(e))
            else:
                identity = _identity(directory)
                if key[0] == "repo" and not os.path.isfile(os.path.join(directory, "HEAD")):
                    identity = None  # not (or no longer) a repository: never watch a whole tree
                seen[key] = _Seen(directory, recursive, identity)
        # One watchdog watch serves every key with that directory: unscheduling it drops them all.
        stale = {w.watch for key, w in self._watched.items()
                 if (w.directory, w.identity) != (seen[key].directory, seen[key].identity)}
        for watch in stale:
            with contextlib.suppress(KeyError, OSError, RuntimeError):  # its emitter may be gone already
                self._observer.unschedule(watch)
        dropped = {key for key, w in self._watched.items() if w.watch in stale}
        for key in dropped:
            del self._watched[key]
        appeared: set[Key] = set()
        for key, found in seen.items():
            directory = found.directory
            if key in self._watched:
                continue
            if found.identity is None:
                if key not in self._missing:
                    self._missing.add(key)
                    self._log.error("watched directory not found", kind=key[0], name=key[1], path=directory,
                                    error=found.error, looking_again_every=RESCAN)
                continue
            handler: FileSystemEventHandler = (_RefChanges(directory, key, loop, self._dirty)
                                               if key[0] == "repo" else
                                               _FileChanges(key[1], key, loop, self._dirty))
            try:
                watch = self._observer.schedule(handler, directory, recursive=found.recursive)
            except OSError as e:  # vanished since the stat, or out of inotify watches: next time
                if key not in self._missing:
                    self._missing.add(key)
                    self._log.error("cannot watch", kind=key[0], name=key[1], path=directory, error=str(e),
                                    trying_again_every=RESCAN)
                continue
            self._watched[key] = _Watched(directory, found.identity, watch)
            if key in self._missing or key in dropped:
                self._log.info("watching again", kind=key[0], name=key[1], path=directory)
                appeared.add(key)
            self._missing.discard(key)
        return appeared

    async def _record(self, key: Key) -> None:
        kind, name = key
        if key in self._missing and (kind == "lock" or self._repos[name].url is None):
            return  # nothing to read until it comes back (a URL's mirror is cloned by recording)
        retry = self._retries.pop(key, None)
        if retry is not None:
            retry.cancel()
        try:
            if kind == "lock":
                await self._locks.record_file(name)
                self._failures.pop(key, None)
                return
            result = await self._recorder.record(name, None)
        except IndexLost:
            raise
        except Exception as e:  # whatever it was (git, the file system, the index), try again later
            self._failed(key, e)
            return
        self._failures.pop(key, None)
        if result.moved:
            self._log.info("refs moved", repository=name, moved=[m.to_json() for m in result.moved],
                           sources=result.sources_indexed)

    def _failed(self, key: Key, e: Exception) -> None:
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (failures - 1))
        self._retries[key] = asyncio.get_running_loop().call_later(delay, self._dirty.put_nowait, key)
        expected = isinstance(e, (BuildrefError, OSError, pygit2.GitError))
        self._log.error("recording failed", kind=key[0], name=key[1], retry_in=delay,
                        error=str(e) if isinstance(e, BuildrefError) else f"{type(e).__name__}: {e}",
                        exc_info=None if expected else e)
