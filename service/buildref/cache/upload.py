"""Uploads: every indexed build's outputs (with their closures) copied to ``[upload] to`` by
``nix copy``, from a durable queue in the index.

A path is copied in a batch on its first try. When a batch fails, each of its paths is tried again
alone soon after, so one path that cannot be copied (a poisoned path) never holds back the others;
a path that fails alone is tried again later and later (exponential backoff with jitter, up to
``max_backoff``), never given up on while it is in the store. A path gone from the store is
dropped with a log line. After a copy, the presence memo forgets the copied paths, so the next
lookup sees them cached. The hook never waits on any of this: the queue is filled when builds are
indexed, well after their events were acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from buildref.config import UploadConfig
from buildref.errors import BuildrefError
from buildref.process import Nix
from buildref.store.api import UploadItem, UploadQueue

FIRST_RETRY = 1.0  # seconds before a path of a failed batch is tried alone
IDLE_WAKE = 30.0  # seconds between looks at the queue when nothing wakes the uploader


@dataclass(frozen=True, slots=True)
class UploadResult:
    """What one round did, for metrics and tests."""

    done: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()


def backoff(attempts: int, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds until try ``attempts + 1`` of a path that failed ``attempts`` times: doubling from
    2 s up to ``cap``, with jitter (50 to 100 %) so that paths failing together spread out."""
    return min(cap, 2.0 ** max(1, attempts)) * (0.5 + rng() / 2)


class Uploader:
    def __init__(self, queue: UploadQueue, nix: Nix, config: UploadConfig,
                 copied: Callable[[Sequence[str]], None] = lambda _: None,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] = random.random) -> None:
        self._queue = queue
        self._nix = nix
        self._config = config
        self._copied = copied
        self._clock = clock
        self._rng = rng
        self._wake = asyncio.Event()
        self._log = structlog.get_logger("buildref.upload")
        self.results: dict[str, int] = {"done": 0, "failed": 0, "dropped": 0}  # since start

    def wake(self) -> None:
        """New paths are queued: look now rather than at the next timer."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            result = await self.round()
            if not (result.done or result.failed or result.dropped):
                self._wake.clear()
                delay = await self._queue.next_due(self._clock())
                timeout = IDLE_WAKE if delay is None else max(0.05, min(IDLE_WAKE, delay))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)

    async def round(self) -> UploadResult:
        """Copy what is due now: new paths in one batch, paths that failed before one by one."""
        items = await self._queue.due(self._clock(), self._config.batch)
        if not items:
            return UploadResult()
        fresh = [i for i in items if i.attempts == 0]
        again = [i for i in items if i.attempts > 0]
        results = [await self._copy(fresh)] if fresh else []
        for item in again:
            results.append(await self._copy([item]))
        total = UploadResult(*(tuple(p for r in results for p in getattr(r, key))
                               for key in ("done", "failed", "dropped")))
        for key in ("done", "failed", "dropped"):
            self.results[key] += len(getattr(total, key))
        return total

    async def _copy(self, items: list[UploadItem]) -> UploadResult:
        now = self._clock()
        paths = [i.path for i in items]
        try:
            valid = await self._nix.path_info(paths)
        except BuildrefError as e:  # Nix itself failing: try again later, nothing dropped
            return await self._failed(items, str(e), now)
        gone = [p for p in paths if valid.get(p) is None]
        for path in gone:
            self._log.warning("not uploaded: gone from the store", path=path)
        if gone:
            await self._queue.dropped(gone, now)
        present = [i for i in items if valid.get(i.path) is not None]
        if not present:
            return UploadResult(dropped=tuple(gone))
        try:
            await self._nix.copy(self._config.to, [i.path for i in present])
        except BuildrefError as e:
            result = await self._failed(present, str(e), now)
            return UploadResult(failed=result.failed, dropped=tuple(gone))
        done = [i.path for i in present]
        await self._queue.done(done, self._clock())
        self._copied(done)
        self._log.info("uploaded", paths=len(done), to=self._config.to)
        return UploadResult(done=tuple(done), dropped=tuple(gone))

    async def _failed(self, items: list[UploadItem], error: str, now: float) -> UploadResult:
        alone = len(items) == 1 and items[0].attempts > 0
        if not alone:  # which path failed is not known: each is tried alone soon
            retries = {i.path: (max(1, i.attempts), now + FIRST_RETRY * (0.5 + self._rng() / 2))
                       for i in items}
        else:
            attempts = items[0].attempts + 1
            delay = backoff(attempts, self._config.max_backoff, self._rng)
            retries = {items[0].path: (attempts, now + delay)}
        await self._queue.failed(retries, error[:2000], now, alone)
        self._log.warning("upload failed", paths=len(items), error=error[:500],
                          retry_in=round(min(at for _, at in retries.values()) - now, 1))
        return UploadResult(failed=tuple(retries) if alone else ())
