"""Learning what each store path the index joins on holds — the input sources of derivations and
the outputs of fixed-output ones: its NAR hash, as the store records it (never hashed again here),
and the git id of its form, read from the store copy. In the background, off the hook's path;
resumable (the queue is in the index), bounded per path."""

from __future__ import annotations

import asyncio
import os

import structlog

from buildref.errors import BadArchive
from buildref.git.forms import TooLarge, read_copy
from buildref.process import Nix
from buildref.store.api import ContentRecord, ContentState, Store

BATCH = 64
RETRY_DELAY = 5.0
MAX_FILES = 200_000  # a form is computed for store paths up to this many files ...
MAX_BYTES = 2 << 30  # ... and bytes; larger ones are matched by NAR hash only


def learn(path: str, nar_hash: str, nar_size: int) -> ContentRecord:
    """The form of one valid store path (runs in a thread: it reads every file)."""
    try:
        facts = read_copy(path, MAX_FILES, MAX_BYTES)
    except TooLarge:
        return ContentRecord(path, ContentState.LARGE, nar_hash, nar_size)
    except BadArchive as e:
        if not os.path.lexists(path):
            return ContentRecord(path, ContentState.GONE)
        return ContentRecord(path, ContentState.FAILED, nar_hash, nar_size, error=str(e))
    form = facts.form
    if not form.identifying:  # nothing to find it by: keep no subdirectories or samples either
        return ContentRecord(path, ContentState.DONE, nar_hash, nar_size, form.oid, form.files, False)
    dirs = tuple((subdir, f.oid) for subdir, f in facts.dirs)
    return ContentRecord(path, ContentState.DONE, nar_hash, nar_size, form.oid, form.files, True, None, dirs,
                         facts.samples)


class ContentLearner:
    def __init__(self, store: Store, nix: Nix) -> None:
        self._store = store
        self._nix = nix
        self._wake = asyncio.Event()
        self._log = structlog.get_logger("buildref.contents")

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Learn what is pending, then wait to be woken (after a build is recorded)."""
        failing: str | None = None
        while True:
            self._wake.clear()
            try:
                paths = await self._store.builds.pending_contents(BATCH)
                if paths:
                    await self._learn(paths)
            except Exception as e:  # Nix or the index unavailable, or a bug: the paths stay pending
                if str(e) != failing:  # once per cause, not once per retry
                    self._log.error("contents not learnt; will retry", error=str(e), kind=type(e).__name__)
                failing = str(e)
                await asyncio.sleep(RETRY_DELAY)
                continue
            if failing is not None:
                self._log.info("learning contents again")
                failing = None
            if not paths:
                await self._wake.wait()

    async def _learn(self, paths: list[str]) -> None:
        present = [p for p in paths if os.path.lexists(p)]
        infos = await self._nix.path_info(present) if present else {}
        results = []
        for path in paths:
            info = infos.get(path)
            if info is None:
                results.append(ContentRecord(path, ContentState.GONE))
            else:
                results.append(await asyncio.to_thread(learn, path, *info))
        await self._store.builds.record_contents(results)
