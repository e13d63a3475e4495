"""The durable inbox: events are committed in groups, and each sender is answered only after the
commit that holds its event (group commit: under load, one fsync covers many events)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from buildref.errors import IndexLost
from buildref.store.api import EventLog, NewEvent

MAX_GROUP = 500  # one INSERT statement per group

_Item = tuple[NewEvent, asyncio.Future[None]]


class Inbox:
    def __init__(self, log: EventLog, on_commit: Callable[[], None]) -> None:
        self._log = log
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._on_commit = on_commit
        self.received = 0
        self.groups = 0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def put(self, event: NewEvent) -> None:
        """Returns once ``event`` is committed; raises if the commit failed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, done))
        await done

    def close(self) -> None:
        """Commit what is queued, then stop :meth:`run`."""
        self._queue.put_nowait(None)

    async def run(self) -> None:
        """Commit what is put, in groups, until :meth:`close`; raises :class:`IndexLost`."""
        stopping = False
        while not stopping:
            first = await self._queue.get()
            group: list[_Item] = []
            if first is None:
                stopping = True
            else:
                group.append(first)
            while len(group) < MAX_GROUP and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                else:
                    group.append(item)
            if group:
                await self._commit(group)

    async def _commit(self, group: list[_Item]) -> None:
        """Commit ``group`` and answer its senders. Raises :class:`IndexLost` (which ends
        :meth:`run`, and the service): the index is gone, so nothing more may be acknowledged."""
        try:
            await self._log.append([event for event, _ in group])
        except Exception as e:  # every waiter hears of it; the senders spool or retry
            for _, done in group:
                if not done.done():
                    done.set_exception(e)
            if isinstance(e, IndexLost):
                while not self._queue.empty():  # the senders queued behind it spool now, too
                    item = self._queue.get_nowait()
                    if item is not None and not item[1].done():
                        item[1].set_exception(e)
                structlog.get_logger("buildref.inbox").critical(
                    "index lost", error=str(e), consequence="hook events are no longer acknowledged "
                    "(they wait in the spool); stopping")
                raise
            return
        self.received += len(group)
        self.groups += 1
        for _, done in group:
            if not done.done():
                done.set_result(None)
        self._on_commit()
