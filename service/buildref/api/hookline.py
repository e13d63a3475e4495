"""The hook socket: each line is one build event from ``buildref-hook``. It is committed to the
inbox — well formed, or kept as failed with its error — before the answer (``ok`` or the error);
a line that could not be committed gets no answer, so the hook spools it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable

import structlog

from buildref.api.sockets import MAX_LINE, Peer
from buildref.errors import BadRequest, BadStorePath, quoted, transient
from buildref.ingest.inbox import Inbox
from buildref.models import HookEvent
from buildref.nix.storepath import MAX_BASE_NAME, StorePath
from buildref.store.api import NewEvent


def parse_event(line: bytes, store_dir: str) -> HookEvent:
    """A well-formed hook event whose drv path is a derivation in ``store_dir``."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"not JSON: {e}") from None
    event = HookEvent.from_json(data)
    if len(event.drv) > len(store_dir) + MAX_BASE_NAME:  # the errors below quote it whole
        raise BadRequest(f"'drv' {quoted(event.drv)} is longer than any store path")
    try:
        path = StorePath.parse(event.drv, store_dir)
    except BadStorePath as e:
        raise BadRequest(e.args[0]) from None
    if not path.is_derivation:
        raise BadRequest(f"'{event.drv}' is not a derivation (.drv)")
    return event


def _in_store(path: str) -> bool:
    """Whether ``path`` exists; when that cannot be told for now (out of memory, an I/O error),
    it is taken to: the indexer reads it later, and retries what it cannot read for now."""
    try:
        os.lstat(path)
    except OSError as e:
        return transient(e)
    return True


def _salvage(line: bytes) -> tuple[str, float]:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        data = None
    return HookEvent.salvage(data, line)


class HookLines:
    def __init__(self, inbox: Inbox, store_dir: str) -> None:
        self._inbox = inbox
        self._store_dir = store_dir
        self.rejected = 0
        self._log = structlog.get_logger("buildref.hook")

    async def accept(self, line: bytes, source: str) -> bytes:
        """Commit one event line and say which way; raises when the commit itself failed, so that
        the sender keeps the event."""
        try:
            event = parse_event(line, self._store_dir)
            if not _in_store(event.drv):
                raise BadRequest(f"derivation '{event.drv}' is not in the store")
            new = NewEvent(event.drv, event.outs, event.t, source)
        except BadRequest as e:
            drv, t = _salvage(line)
            return await self._keep_failed(drv, t if t >= 0 else time.time(), source, str(e))
        await self._inbox.put(new)
        return b"ok\n"

    async def _keep_failed(self, drv: str, t: float, source: str, error: str) -> bytes:
        """Commit an event that cannot be indexed, as failed with ``error``; the answer says why."""
        await self._inbox.put(NewEvent(drv, (), t, source, error=error))
        self.rejected += 1
        self._log.warning("bad hook event", source=source, error=error, drv=drv[:200])
        return f"{error}\n".encode()

    async def line(self, line: bytes, peer: Peer) -> bytes | None:
        return await self._answered(self.accept(line, "socket"))

    async def too_long(self) -> bytes | None:
        error = f"error: event line longer than {MAX_LINE} bytes"
        return await self._answered(self._keep_failed("(line too long)", time.time(), "socket", error))

    async def _answered(self, committing: Awaitable[bytes]) -> bytes | None:
        try:
            return await committing
        except Exception as e:
            # not committed: no answer, so the hook spools the event
            self._log.error("event not committed", error=str(e))
            return None

    async def spooled(self, line: bytes) -> None:
        await self.accept(line, "spool")
