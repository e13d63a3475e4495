"""``buildref serve``: builds every component once, owns their lifetimes on one exit stack and
their tasks in one TaskGroup, and shuts down in one order, each step awaited:

stop accepting (hook and query sockets, HTTP) -> let open requests finish (then cancel them: a
``record`` running git too) -> stop the spool and the watchers -> commit what the inbox holds ->
index what is pending (bounded) -> stop the watchdog thread -> close the index -> remove the
sockets it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from buildref.api import rpc
from buildref.api.hookline import HookLines
from buildref.api.http import HttpServer, listening
from buildref.api.metrics import Metrics
from buildref.api.operations import Admission, Caller, Services, bind
from buildref.api.sockets import (
    MAX_LINE,
    LineServer,
    Peer,
    fd_budget,
    inherited_sockets,
    listen_unix,
    notify,
    raise_fd_limit,
)
from buildref.cache import CacheClient
from buildref.cache.upload import Uploader
from buildref.config import Config
from buildref.diskspace import SpaceFloor
from buildref.errors import BadConfig, BuildrefError, IndexLost
from buildref.ingest.contents import ContentLearner
from buildref.ingest.inbox import Inbox
from buildref.ingest.indexer import Indexer
from buildref.ingest.spool import Spool
from buildref.models import Status
from buildref.process import Nix
from buildref.query.cached import CacheView
from buildref.query.context import QueryContext
from buildref.query.status import Activity, status
from buildref.sources.gitwork import GitWork
from buildref.sources.locks import LockRecorder
from buildref.sources.recorder import RefRecorder
from buildref.sources.repositories import Repositories
from buildref.sources.watch import RepoWatcher
from buildref.statedir import locked, private_dir
from buildref.store import open_store, sqlite_path

SHUTDOWN_GRACE = 5.0  # seconds open requests get to finish after SIGTERM, before they are cancelled
SWITCH_INTERVAL = 0.0005  # seconds; Python's default is 0.005
INDEX_DRAIN = 60.0  # seconds SIGTERM waits for pending events to be indexed (the rest wait for next start)
RESTART_FIRST = 1.0  # seconds before a background task that failed runs again; doubled each time
RESTART_MAX = 60.0


@contextlib.contextmanager
def _sockets(config: Config) -> Iterator[tuple[socket.socket, socket.socket, bool]]:
    """The hook and query sockets: from systemd when it passed them (left in place at exit), else
    made here (and removed at exit)."""
    inherited = inherited_sockets()
    if inherited:
        hook, query = inherited.get("hook"), inherited.get("query")
        if hook is None or query is None:
            raise BadConfig(f"socket activation passed {sorted(inherited)}; name them 'hook' and 'query'"
                            " (FileDescriptorName=)")
        yield hook, query, True
        return
    created: list[str] = []
    try:
        hook = listen_unix(config.hook.path, config.hook.mode)
        created.append(config.hook.path)
        query = listen_unix(config.query.path, config.query.mode)
        created.append(config.query.path)
        yield hook, query, False
    finally:
        for path in created:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _index_directory(config: Config) -> str:
    """Where the index's file lives (its free space is what the floor guards)."""
    if config.database.startswith("sqlite://"):
        return os.path.dirname(sqlite_path(config.database)) or "/"
    return config.state_dir


@contextlib.contextmanager
def _observer() -> Iterator[BaseObserver]:
    """One watchdog thread for the spool and the repositories."""
    observer = Observer()
    observer.daemon = True
    try:
        yield observer
    finally:
        if observer.is_alive():
            observer.stop()
            observer.join(timeout=5)


async def _supervised(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """``run`` for the life of the service: whatever error it lets out (a bug, a failure nobody
    foresaw) is logged and ``run`` started again, backing off; it never stops the service. Only
    :class:`IndexLost` does: nothing written from then on would survive."""
    log = structlog.get_logger()
    delay = RESTART_FIRST
    while True:
        began = time.monotonic()
        try:
            await run()
            return
        except IndexLost:
            raise
        except Exception as e:
            if time.monotonic() - began > RESTART_MAX:  # it ran well for a while: a fresh failure
                delay = RESTART_FIRST
            log.error("task failed; restarting it", task=name, restart_in=delay, exc_info=e)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RESTART_MAX)


def _buildref_error(group: BaseExceptionGroup[Any]) -> BuildrefError | None:
    """The first error of buildref's own in what a TaskGroup raised, to be said in one line."""
    for e in group.exceptions:
        if isinstance(e, BuildrefError):
            return e
        if isinstance(e, BaseExceptionGroup):
            found = _buildref_error(e)
            if found is not None:
                return found
    return None


async def serve(config: Config) -> None:
    """Run the service until SIGTERM or SIGINT. Raises a :class:`BuildrefError` (one line for
    the operator) when it cannot start, or must stop: the state directory is another service's,
    the index cannot be opened, or it was deleted while running."""
    try:
        await _serve(config)
    except ExceptionGroup as group:  # from the TaskGroup: only IndexLost ends a task on purpose
        error = _buildref_error(group)
        if error is None:
            raise
        raise error from None


async def _serve(config: Config) -> None:
    log = structlog.get_logger()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.time()
    # threads (git work, parsing) hold the GIL for up to the switch interval at a time: the loop
    # that answers the hook waits for it at every step, so keep the interval short
    sys.setswitchinterval(SWITCH_INTERVAL)
    # every connection is a descriptor: take all the process may have, then share them out so
    # that clients can never take the ones the hook socket and the index need
    http_connections = config.http.max_connections if config.http else 0
    budget = fd_budget(raise_fd_limit(), config.hook.max_connections, config.query.max_connections,
                       config.query.max_connections_per_uid, http_connections)

    async with contextlib.AsyncExitStack() as stack:
        # private whatever the umask: the index, the spool and mirrors of private repositories
        private_dir(config.state_dir)
        stack.enter_context(locked(config.state_dir))  # before anything in it is touched
        private_dir(os.path.join(config.state_dir, "mirrors"))
        private_dir(config.spool_dir)
        store = await stack.enter_async_context(open_store(config.database, config.inbox, config.builder))
        hook_sock, query_sock, activated = stack.enter_context(_sockets(config))
        http_socks = stack.enter_context(listening(config.http)) if config.http else None
        observer = stack.enter_context(_observer())

        repositories = Repositories(config.repositories, os.path.join(config.state_dir, "mirrors"))
        locks = LockRecorder(store, config.flake_locks, config.store_dir)
        git = GitWork(config.store_dir)
        stack.callback(git.close)
        recorder = RefRecorder(store, repositories, git, locks, config.limits,
                               SpaceFloor(_index_directory(config), config.limits.min_free_mb),
                               config.builder)
        nix = Nix(config.nix_bin_dir)
        learner = ContentLearner(store, nix)
        client = None
        if config.caches:  # probes go straight to the caches, bounded and memoised
            client = await stack.enter_async_context(CacheClient(config.caches, config.store_dir))
        caches = CacheView(client)
        uploader = None
        if config.upload is not None:
            uploader = Uploader(store.uploads, nix, config.upload, copied=caches.forget)
        indexer = Indexer(store, nix, config.store_dir, learner.wake, config.builder,
                          on_uploads=uploader.wake if uploader is not None else None)
        inbox = Inbox(store.events, indexer.wake)
        hook_lines = HookLines(inbox, config.store_dir)
        spool = Spool(config.spool_dir, hook_lines.spooled)
        watcher = RepoWatcher(config.repositories, recorder, locks, observer)

        def activity() -> Activity:
            return Activity(started=started, queued=inbox.depth, received=inbox.received,
                            indexed=indexer.indexed, failed=indexer.failed + hook_lines.rejected,
                            commit_groups=inbox.groups, builder=config.builder,
                            index_error=indexer.unavailable,
                            upload_to=config.upload.to if config.upload is not None else None)

        async def current_status() -> Status:
            return await status(store, activity(), config.spool_dir)

        queries = QueryContext(store, repositories, git, config.store_dir, config.builder, caches)
        services = Services(queries, recorder, current_status, config.limits,
                            Admission(config.limits.user_requests))

        def on_query_error(what: str, e: BaseException) -> None:
            if isinstance(e, BuildrefError):
                log.warning(what, error=str(e))
            else:
                log.error(what, exc_info=e)

        # parsing, checking and encoding what a client chose the size of: off the event loop
        wire = stack.enter_context(ThreadPoolExecutor(2, thread_name_prefix="buildref-wire"))

        def prepare(request: rpc.Request, uid: int) -> Callable[[], Awaitable[Any]]:
            return bind(services, Caller(uid), request.method, request.params)

        async def query_line(line: bytes, peer: Peer) -> bytes | None:
            return await rpc.answer(line, peer.uid, prepare, on_query_error, wire)

        async def query_too_long() -> bytes | None:
            log.warning("bad query", error="request line too long")
            too_long = f"error: request line longer than {MAX_LINE} bytes"
            return rpc.error_response(None, rpc.PARSE_ERROR, too_long)

        def query_refused(message: str) -> bytes:
            return rpc.error_response(None, rpc.UNAVAILABLE, message)

        idle = config.idle_timeout
        # a hook's request is its event's commit: it is never cancelled (the hook spools when it
        # gives up, and an event committed twice is still one)
        hook_server = LineServer("hook", hook_lines.line, hook_lines.too_long, idle_timeout=idle,
                                 limits=budget.hook, log=log, cancel_when_gone=False)
        query_server = LineServer("query", query_line, query_too_long, idle_timeout=idle, limits=budget.query,
                                  log=log, refuse=query_refused)
        http_server = None
        if config.http is not None and http_socks is not None:
            metrics = Metrics(probes=(lambda: client.stats) if client is not None else lambda: {},
                              uploads=(lambda: uploader.results) if uploader is not None else lambda: {})
            http_server = HttpServer(http_socks, services, current_status, metrics, on_query_error,
                                     idle_timeout=idle, max_connections=budget.http, wire=wire)
            stack.push_async_callback(http_server.close)  # on any way out, before the index closes

        async with asyncio.TaskGroup() as tasks:
            inbox_task = tasks.create_task(inbox.run())  # not restarted: it ends only with IndexLost
            indexer_task = tasks.create_task(_supervised("indexer", indexer.run))
            spool.watch(observer, loop)
            observer.start()
            background = [tasks.create_task(_supervised("spool", spool.run)),
                          tasks.create_task(_supervised("watcher", watcher.run)),
                          tasks.create_task(_supervised("contents", learner.run))]
            if uploader is not None:
                background.append(tasks.create_task(_supervised("upload", uploader.run)))
            await hook_server.start(hook_sock)
            await query_server.start(query_sock)
            if http_server is not None:
                await http_server.start()
            http = config.http.address if config.http else None
            notify(f"READY=1\nSTATUS=serving on {config.hook.path} and {config.query.path}"
                   + (f" and http://{http}" if http else ""))
            log.info("serving", hook=config.hook.path, query=config.query.path, http=http,
                     database=store.location, builder=config.builder, pid=os.getpid(),
                     socket_activated=activated)
            log.info("connection limits", open_files=budget.fds, hook=budget.hook.total,
                     query=budget.query.total, query_per_uid=budget.query.per_uid, http=budget.http)

            await stop.wait()
            notify("STOPPING=1")
            log.info("stopping")
            hook_server.stop_accepting()
            query_server.stop_accepting()
            draining = [hook_server.drain(SHUTDOWN_GRACE), query_server.drain(SHUTDOWN_GRACE)]
            if http_server is not None:  # its drain stops accepting first
                draining.append(http_server.drain(SHUTDOWN_GRACE))
            cancelled = sum(await asyncio.gather(*draining))
            if cancelled:
                log.warning("requests cancelled at shutdown", count=cancelled)
            for task in background:
                task.cancel()
            await asyncio.wait(background)
            inbox.close()
            await inbox_task
            indexer.stop()
            try:
                await asyncio.wait_for(asyncio.shield(indexer_task), INDEX_DRAIN)
            except TimeoutError:
                indexer_task.cancel()
                log.warning("stopped with events still pending; they are indexed at next start")
    log.info("stopped")
