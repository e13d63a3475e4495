"""Recording flake.lock files: each locked input (type, url or owner/repo, ref, rev, narHash) and
the source store path its narHash implies, so a build that uses a pinned input is matched to its
revision without the input's repository at hand."""

from __future__ import annotations

import asyncio
import os

import structlog

from buildref.errors import BuildrefError, StorageError
from buildref.nix.flakelock import parse_lock
from buildref.nix.storepath import source_path
from buildref.store.api import LockRecord, Store


def locked_rows(text: bytes, store_dir: str) -> list[LockRecord]:
    rows: list[LockRecord] = []
    for item in parse_lock(text).inputs():
        locked = item.node.locked
        if locked is None:
            continue
        nar_hash = locked.nar_hash
        if nar_hash is None:  # a path input without narHash: nothing to match by
            continue
        location = locked.url or (f"{locked.owner}/{locked.repo}" if locked.owner and locked.repo else None)
        location = location or locked.path or locked.type
        rows.append(LockRecord("/".join(item.path), locked.type, location, locked.ref, locked.rev,
                               nar_hash.sri, source_path(nar_hash, "source", store_dir=store_dir)))
    return rows


class LockRecorder:
    def __init__(self, store: Store, paths: tuple[str, ...], store_dir: str) -> None:
        self._store = store
        self.paths = paths
        self._store_dir = store_dir
        self._log = structlog.get_logger("buildref.locks")

    async def record_text(self, lock_file: str, text: bytes) -> int:
        rows = locked_rows(text, self._store_dir)
        await self._store.sources.replace_lock(lock_file, rows)
        return len(rows)

    async def record_file(self, path: str) -> None:
        """Read a configured flake.lock; a missing or malformed file is logged, not fatal (an index
        that cannot be written raises StorageError: the caller tries again later)."""
        try:
            text = await asyncio.to_thread(_read, path)
            count = await self.record_text(path, text)
        except StorageError:
            raise
        except (OSError, BuildrefError) as e:
            self._log.error("flake.lock not recorded", path=path, error=str(e))
            return
        self._log.info("flake.lock recorded", path=path, inputs=count)


def _read(path: str) -> bytes:
    with open(os.path.abspath(path), "rb") as f:
        return f.read()
