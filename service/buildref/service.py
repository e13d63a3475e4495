"""``buildref serve``: the long-running service that wires the sockets, the inbox, the indexer and
the spool together, and owns their start and shutdown in one place."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from watchdog.observers import Observer

from buildref import __version__
from buildref.config import Config
from buildref.db import Database, NewEvent
from buildref.errors import BadConfig, BadRequest, BuildrefError
from buildref.inbox import Inbox
from buildref.indexer import Indexer
from buildref.locks import LockRecorder
from buildref.lookup import Lookups
from buildref.process import Nix
from buildref.protocol import (
    INVALID_PARAMS,
    MAX_LINE,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVER_ERROR,
    Request,
    RequestError,
    error_response,
    parse_event,
    parse_request,
    response,
    salvage_event,
)
from buildref.refs import RefRecorder
from buildref.sockets import Peer, inherited_sockets, listen_unix, notify, serve_lines
from buildref.spool import Spool, spooled
from buildref.watch import RepoWatcher

SHUTDOWN_GRACE = 5.0  # seconds in-flight connections get to finish after SIGTERM
INDEX_DRAIN = 60.0  # seconds SIGTERM waits for pending events to be indexed (the rest wait for next start)


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._log = structlog.get_logger()
        self._started = time.time()
        self._stop = asyncio.Event()
        self._active = 0
        self._rejected = 0
        self._db: Database | None = None
        self._inbox: Inbox | None = None
        self._indexer: Indexer | None = None
        self._spool: Spool | None = None
        self._refs_recorder: RefRecorder | None = None
        self._lookups: Lookups | None = None

    # -- hook socket

    async def _accept(self, line: bytes, source: str) -> bytes:
        """Commit one event line (well-formed, or kept as failed) and say which; raises when the
        commit itself failed, so that the sender keeps the event."""
        assert self._inbox is not None
        try:
            event = parse_event(line, self.config.store_dir)
            if not os.path.lexists(event.drv):
                raise BadRequest(f"derivation '{event.drv}' is not in the store")
            new = NewEvent(event.drv, event.outs, event.t, source)
        except BadRequest as e:
            drv, t = salvage_event(line)
            new = NewEvent(drv, (), t if t >= 0 else time.time(), source, error=str(e))
            self._rejected += 1
            self._log.warning("bad hook event", source=source, error=str(e), drv=drv[:200])
        await self._inbox.put(new)
        return b"ok\n" if new.error is None else f"{new.error}\n".encode()

    async def _hook_line(self, line: bytes, peer: Peer) -> bytes | None:
        self._active += 1
        try:
            return await self._accept(line, "socket")
        except Exception as e:
            # not committed: no answer, so the hook spools the event
            self._log.error("event not committed", error=str(e))
            return None
        finally:
            self._active -= 1

    async def _hook_too_long(self) -> bytes | None:
        error = f"error: event line longer than {MAX_LINE} bytes"
        try:
            assert self._inbox is not None
            await self._inbox.put(NewEvent("(line too long)", (), time.time(), "socket", error=error))
        except Exception as e:
            self._log.error("event not committed", error=str(e))
            return None
        self._rejected += 1
        self._log.warning("bad hook event", source="socket", error=error)
        return f"{error}\n".encode()

    async def _spooled_line(self, line: bytes) -> None:
        await self._accept(line, "spool")

    # -- query socket

    async def _query_line(self, line: bytes, peer: Peer) -> bytes | None:
        request_id = None
        try:
            request = parse_request(line)
            request_id = request.id
            result = await self._dispatch(request, peer)
        except RequestError as e:
            self._log.warning("bad query", error=e.message)
            return error_response(e.request_id if request_id is None else request_id, e.code, e.message)
        except BuildrefError as e:
            return error_response(request_id, SERVER_ERROR, str(e))
        except Exception as e:  # a bug must not take the service down; the caller hears of it
            self._log.exception("query failed")
            return error_response(request_id, SERVER_ERROR, f"error: internal error: {e!r}")
        return response(request_id, result)

    async def _query_too_long(self) -> bytes | None:
        self._log.warning("bad query", error="request line too long")
        return error_response(None, PARSE_ERROR, f"error: request line longer than {MAX_LINE} bytes")

    async def _dispatch(self, request: Request, peer: Peer) -> Any:
        handlers: dict[str, Callable[[Request], Awaitable[Any]]] = {
            "status": self.status, "builds": self._builds, "events": self._events, "refs": self._refs,
            "lookup": self._lookup, "why": self._why,
        }
        if request.method == "record":
            return await self._record(request, peer)
        handler = handlers.get(request.method)
        if handler is None:
            raise RequestError(METHOD_NOT_FOUND, f"error: unknown method '{request.method}'", request.id)
        return await handler(request)

    async def status(self, request: Request | None = None) -> dict[str, Any]:
        assert self._db is not None and self._inbox is not None and self._indexer is not None
        counts = await self._db.event_counts()
        tables = await self._db.counts()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "startedAt": self._started,
            "uptime": round(time.time() - self._started, 3),
            "queueDepth": self._inbox.depth + counts["pending"],
            "events": {
                "received": sum(counts.values()),
                "indexed": counts["indexed"],
                "failed": counts["failed"],
                "pending": counts["pending"],
            },
            "sinceStart": {
                "received": self._inbox.received,
                "indexed": self._indexer.indexed,
                "failed": self._indexer.failed + self._rejected,
                "commitGroups": self._inbox.groups,
            },
            "spoolFiles": len(spooled(self.config.spool_dir)),
            "lastEvent": await self._db.last_event(),
            "database": {"path": self._db.path, "bytes": self._db.size(), **tables},
        }

    async def _builds(self, request: Request) -> list[dict[str, Any]]:
        assert self._db is not None
        since = _number(request, "since", 0.0)
        limit = int(_number(request, "limit", 100))
        if not 1 <= limit <= 100_000:
            raise RequestError(INVALID_PARAMS, "error: 'limit' must be between 1 and 100000", request.id)
        repo = request.params.get("repository")
        if repo is not None:
            assert self._lookups is not None
            return await self._lookups.repository_builds(_string(request, "repository"), since, limit)
        return await self._db.builds(since, limit)

    async def _events(self, request: Request) -> list[dict[str, Any]]:
        assert self._db is not None
        keys = request.params.get("events")
        if (not isinstance(keys, list) or len(keys) > 100_000
                or not all(isinstance(k, list) and len(k) == 2 and isinstance(k[0], str)
                           and isinstance(k[1], int | float) and not isinstance(k[1], bool) for k in keys)):
            raise RequestError(INVALID_PARAMS, "error: 'events' must be a list of [drvPath, t] pairs",
                               request.id)
        rows = await self._db.events_for([(k[0], float(k[1])) for k in keys])
        return [{"drvPath": d, "t": t, "state": s, "error": e} for d, t, s, e in rows]

    async def _record(self, request: Request, peer: Peer) -> dict[str, Any]:
        assert self._refs_recorder is not None
        repo, refs = _string(request, "repository"), request.params.get("refs")
        if refs is not None and (not isinstance(refs, list) or not all(isinstance(r, str) for r in refs)):
            raise RequestError(INVALID_PARAMS, "error: 'refs' must be a list of ref names", request.id)
        result = await self._refs_recorder.record(repo, refs or None, peer.uid, fetch=True)
        self._log.info("refs recorded", repository=result["repository"], moved=len(result["moved"]),
                       sources=result["sourcesIndexed"])
        return result

    async def _refs(self, request: Request) -> list[dict[str, Any]]:
        assert self._refs_recorder is not None
        return await self._refs_recorder.history(_string(request, "repository"))

    async def _lookup(self, request: Request) -> dict[str, Any]:
        assert self._lookups is not None
        at = request.params.get("at")
        if at is not None:
            at = _number(request, "at", 0.0)
        glob = request.params.get("name")
        if glob is not None and not isinstance(glob, str):
            raise RequestError(INVALID_PARAMS, "error: 'name' must be a glob pattern", request.id)
        direct = request.params.get("direct", False)
        if not isinstance(direct, bool):
            raise RequestError(INVALID_PARAMS, "error: 'direct' must be true or false", request.id)
        return await self._lookups.lookup(_string(request, "repository"), _string(request, "ref"), at, glob,
                                          direct)

    async def _why(self, request: Request) -> dict[str, Any]:
        assert self._lookups is not None
        return await self._lookups.why(_string(request, "what"))

    # -- life cycle

    def _sockets(self) -> tuple[socket.socket, socket.socket, list[str]]:
        """The hook and query sockets: from systemd when it passed them, else made here (and
        then removed at exit)."""
        inherited = inherited_sockets()
        if inherited:
            hook, query = inherited.get("hook"), inherited.get("query")
            if hook is None or query is None:
                raise BadConfig(f"socket activation passed {sorted(inherited)}; name them 'hook' and 'query'"
                                " (FileDescriptorName=)")
            return hook, query, []
        created = []
        hook = listen_unix(self.config.hook.path, self.config.hook.mode)
        created.append(self.config.hook.path)
        try:
            query = listen_unix(self.config.query.path, self.config.query.mode)
        except BaseException:
            hook.close()
            os.unlink(self.config.hook.path)
            raise
        created.append(self.config.query.path)
        return hook, query, created

    async def run(self) -> None:
        config = self.config
        os.makedirs(config.state_dir, mode=0o755, exist_ok=True)
        os.makedirs(os.path.dirname(config.sqlite_path), mode=0o755, exist_ok=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)

        self._db = db = await Database.open(config.sqlite_path)
        created: list[str] = []
        try:
            self._indexer = indexer = Indexer(db, Nix(config.nix_bin_dir), config.store_dir)
            self._inbox = inbox = Inbox(db, lambda _: indexer.wake())
            self._spool = spool = Spool(config.spool_dir, self._spooled_line)
            locks = LockRecorder(db, config.flake_locks, config.store_dir)
            self._refs_recorder = RefRecorder(db, config.repositories, config.store_dir,
                                              os.path.join(config.state_dir, "mirrors"), locks)
            self._lookups = Lookups(db, self._refs_recorder, config.store_dir)
            watcher = RepoWatcher(config.repositories, self._refs_recorder, locks)
            hook_sock, query_sock, created = self._sockets()
            on_error = self._connection_error
            hook_server = await serve_lines(hook_sock, self._hook_line, self._hook_too_long,
                                            config.idle_timeout, on_error)
            query_server = await serve_lines(query_sock, self._query_line, self._query_too_long,
                                             config.idle_timeout, on_error)
            async with asyncio.TaskGroup() as tasks:
                inbox_task = tasks.create_task(inbox.run())
                indexer_task = tasks.create_task(indexer.run())
                observer = Observer()  # one watchdog thread for the spool and the repositories
                observer.daemon = True
                spool.watch(observer, loop)
                watcher.watch(observer, loop)
                observer.start()
                spool_task = tasks.create_task(spool.run())
                watch_task = tasks.create_task(watcher.run())
                notify(f"READY=1\nSTATUS=serving on {config.hook.path} and {config.query.path}")
                self._log.info("serving", hook=config.hook.path, query=config.query.path, database=db.path,
                               pid=os.getpid(), socket_activated=not created)

                await self._stop.wait()
                notify("STOPPING=1")
                self._log.info("stopping")
                hook_server.close()
                query_server.close()
                deadline = time.monotonic() + SHUTDOWN_GRACE
                while self._active and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                observer.stop()
                observer.join(timeout=5)
                spool_task.cancel()
                watch_task.cancel()
                inbox.close()
                await inbox_task
                indexer.stop()
                try:
                    await asyncio.wait_for(asyncio.shield(indexer_task), INDEX_DRAIN)
                except TimeoutError:
                    indexer_task.cancel()
                    self._log.warning("stopped with events still pending; they are indexed at next start")
        finally:
            await db.close()
            for path in created:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._log.info("stopped")

    def _connection_error(self, message: str) -> None:
        self._log.warning("connection", error=message)


def _string(request: Request, key: str) -> str:
    value = request.params.get(key)
    if not isinstance(value, str) or not value:
        raise RequestError(INVALID_PARAMS, f"error: '{key}' must be a non-empty string", request.id)
    return value


def _number(request: Request, key: str, default: float) -> float:
    value = request.params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(INVALID_PARAMS, f"error: '{key}' must be a number", request.id)
    return float(value)
