"""``status``: what the service is doing — its queue, what it received and indexed, the index."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from buildref import __version__
from buildref.ingest.spool import spooled
from buildref.models import DatabaseInfo, SinceStart, Status
from buildref.store.api import Store


@dataclass(frozen=True, slots=True)
class Activity:
    """The service's counters since it started."""

    started: float
    queued: int  # events received and not yet committed
    received: int
    indexed: int
    failed: int
    commit_groups: int


async def status(store: Store, activity: Activity, spool_dir: str) -> Status:
    async with store.reading() as reader:
        counts = await reader.events.counts()
        last = await reader.events.last()
        tables = await reader.builds.table_counts()
        backlog = await reader.builds.content_backlog()
    return Status(
        version=__version__,
        pid=os.getpid(),
        started_at=activity.started,
        uptime=round(time.time() - activity.started, 3),
        queue_depth=activity.queued + counts.pending,
        events=counts,
        since_start=SinceStart(activity.received, activity.indexed, activity.failed, activity.commit_groups),
        spool_files=len(spooled(spool_dir)),
        last_event=last,
        database=DatabaseInfo(store.location, store.size(), tables.derivations, tables.outputs,
                              tables.builds),
        contents_pending=backlog,
    )
