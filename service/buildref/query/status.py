"""``status``: what the service is doing — its queue, what it received and indexed, the index."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from buildref import __version__
from buildref.errors import StorageError
from buildref.ingest.spool import spooled
from buildref.models import DatabaseInfo, IndexLag, SinceStart, Status, UploadStatus
from buildref.store import redacted
from buildref.store.api import Store, TableCounts

INDEX_TIMEOUT = 3.0  # seconds status waits for a (shared, remote) index's counts


@dataclass(frozen=True, slots=True)
class Activity:
    """The service's counters since it started."""

    started: float
    queued: int  # events received and not yet committed
    received: int
    indexed: int
    failed: int
    commit_groups: int
    builder: str = ""
    index_error: str | None = None  # why the indexer could not write the index, while it cannot
    upload_to: str | None = None  # [upload] to, when configured


async def status(store: Store, activity: Activity, spool_dir: str) -> Status:
    """The inbox's part always (it is local); the index's part when it can be read (a fleet's
    shared index may be away: its counts are then -1, and ``indexLag`` says why)."""
    error = activity.index_error
    spool_files = len(await asyncio.to_thread(spooled, spool_dir))  # a directory listing: not on the loop
    upload = None
    if activity.upload_to is not None:  # this machine's queue, whatever the index
        queue = await store.uploads.counts()
        upload = UploadStatus(queue.pending, queue.done, queue.failed, queue.dropped,
                              redacted(activity.upload_to))
    async with store.reading() as reader:
        counts = await reader.events.counts()
        last = await reader.events.last()
        oldest = await reader.events.oldest_pending()
        try:
            async with asyncio.timeout(INDEX_TIMEOUT):
                tables: TableCounts | None = await reader.builds.table_counts()
                backlog = await reader.builds.content_backlog()
        except StorageError as e:
            tables, backlog, error = None, -1, str(e)
        except TimeoutError:
            tables, backlog = None, -1
            error = f"error: the index did not answer within {INDEX_TIMEOUT:.0f} s"
    now = time.time()
    unknown = TableCounts(-1, -1, -1)
    shown = tables or unknown
    return Status(
        version=__version__,
        pid=os.getpid(),
        started_at=activity.started,
        uptime=round(now - activity.started, 3),
        queue_depth=activity.queued + counts.pending,
        events=counts,
        since_start=SinceStart(activity.received, activity.indexed, activity.failed, activity.commit_groups),
        spool_files=spool_files,
        last_event=last,
        database=DatabaseInfo(store.location, store.size(), shown.derivations, shown.outputs, shown.builds),
        contents_pending=backlog,
        builder=activity.builder,
        index_lag=IndexLag(events=counts.pending,
                           seconds=0.0 if oldest is None else round(max(0.0, now - oldest), 3),
                           reachable=error is None, error=error),
        upload=upload,
    )
