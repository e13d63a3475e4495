"""The spool directory: events the hook wrote to disk while the service was unreachable.

Drained at start, whenever a file lands there (watchdog), and every few seconds besides (a
directory removed and made again by the hook has lost its watch); a file is removed only after its
event is committed, so a crash mid-drain loses nothing (a second copy is the same event, kept once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver

SUFFIX = ".json"
RETRY_DELAY = 5.0
SWEEP = 5.0  # seconds between looks without a change seen: a watch is lost with its directory
GROUP = 500  # files accepted at once: their events share the inbox's group commits

Accept = Callable[[bytes], Awaitable[None]]


def spooled(spool_dir: str) -> list[str]:
    """The complete spool files, oldest first (names start with the hook's time)."""
    try:
        names = os.listdir(spool_dir)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(spool_dir, n) for n in names if n.endswith(SUFFIX) and not n.startswith("."))


class _NewFiles(FileSystemEventHandler):
    """Runs in watchdog's thread: wakes the drain on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        self._loop, self._wake = loop, wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("created", "moved", "modified"):
            self._loop.call_soon_threadsafe(self._wake.set)


class Spool:
    def __init__(self, spool_dir: str, accept: Accept) -> None:
        self.dir = spool_dir
        self._accept = accept
        self._wake = asyncio.Event()
        self._log = structlog.get_logger("buildref.spool")

    def watch(self, observer: BaseObserver, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``observer`` (the service's one watchdog thread) wake :meth:`run` on new files."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        observer.schedule(_NewFiles(loop, self._wake), self.dir, recursive=False)

    async def run(self) -> None:
        """Drain now, then again after every change in the directory (until cancelled). A drain
        that could not finish (the database refused a commit, a file cannot be removed) is tried
        again after :data:`RETRY_DELAY` seconds; the files stay until their events are committed."""
        while True:
            self._wake.clear()
            try:
                await self.drain()
            except Exception as e:
                self._log.error("spool drain interrupted; will retry", error=str(e))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), RETRY_DELAY)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SWEEP)

    async def drain(self) -> int:
        count = 0
        paths = spooled(self.dir)
        for start in range(0, len(paths), GROUP):
            lines = self._read(paths[start:start + GROUP])
            # each commits its event, or keeps it as failed with its error; queued in order, and
            # committed together rather than a commit (an fsync) per file
            done = await asyncio.gather(*(self._accept(line) for _, line in lines), return_exceptions=True)
            for (path, _), result in zip(lines, done, strict=True):
                if isinstance(result, BaseException):
                    raise result  # this file and the rest stay, for the next drain
                os.unlink(path)
                count += 1
        if count:
            self._log.info("spool drained", events=count)
        return count

    def _read(self, paths: list[str]) -> list[tuple[str, bytes]]:
        lines = []
        for path in paths:
            try:
                with open(path, "rb") as f:
                    lines.append((path, f.read()))
            except FileNotFoundError:
                continue  # drained by an earlier pass
            except OSError as e:
                self._log.error("unreadable spool file", path=path, error=str(e))
        return lines

