"""The one operations table: method -> parameters (a model, validated once as it is read) -> use
case. The query socket serves it; so does the HTTP API, whose callers may only read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from buildref.config import Limits
from buildref.errors import Forbidden, ServiceUnavailable, UnknownMethod, quoted
from buildref.models import (
    BuildsParams,
    EventsParams,
    LookupParams,
    NoParams,
    RecordParams,
    RepoParams,
    WhatParams,
    Wire,
    dump,
)
from buildref.query import listings
from buildref.query.context import QueryContext
from buildref.query.lookup import lookup
from buildref.query.why import why
from buildref.sources.access import trusted
from buildref.sources.recorder import RefRecorder


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks. ``uid`` comes from the kernel (SO_PEERCRED) on the Unix socket; a remote caller
    (HTTP) has none and may only read."""

    uid: int | None


class Admission:
    """How many requests each user (not root, not the service's user) has running; one more than
    ``limits.user_requests`` is refused at once rather than queued behind the others."""

    def __init__(self, per_user: int) -> None:
        self._per_user = per_user
        self._running: dict[int, int] = {}

    @contextlib.contextmanager
    def enter(self, caller: Caller) -> Iterator[None]:
        uid = caller.uid
        if uid is None or trusted(uid):
            yield
            return
        if self._running.get(uid, 0) >= self._per_user:
            raise ServiceUnavailable(f"uid {uid} already has {self._per_user} requests running (limits."
                                     "user_requests); ask again when one is answered")
        self._running[uid] = self._running.get(uid, 0) + 1
        try:
            yield
        finally:
            self._running[uid] -= 1
            if not self._running[uid]:
                del self._running[uid]


@dataclass(frozen=True, slots=True)
class Services:
    """What the operations run on, built once by the app."""

    queries: QueryContext
    recorder: RefRecorder
    status: Callable[[], Awaitable[Wire]]
    limits: Limits
    admission: Admission


Run = Callable[[Services, Caller, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    params: type[Wire]
    run: Run
    writes: bool = False  # reads git and writes the index: local callers only


async def _status(s: Services, _: Caller, __: NoParams) -> Wire:
    return await s.status()


async def _builds(s: Services, _: Caller, p: BuildsParams) -> Any:
    return await listings.builds(s.queries, p)


async def _events(s: Services, _: Caller, p: EventsParams) -> Any:
    return await listings.events(s.queries, p)


async def _record(s: Services, caller: Caller, p: RecordParams) -> Any:
    return await s.recorder.record(p.repo, p.refs, caller.uid, fetch=True)


async def _refs(s: Services, _: Caller, p: RepoParams) -> Any:
    return await listings.ref_history(s.queries, p.repo)


async def _lookup(s: Services, _: Caller, p: LookupParams) -> Any:
    return await lookup(s.queries, p)


async def _why(s: Services, _: Caller, p: WhatParams) -> Any:
    return await why(s.queries, p.what)


async def _show(s: Services, _: Caller, p: WhatParams) -> Any:
    return await listings.show(s.queries, p.what)


OPERATIONS: Mapping[str, Operation] = {op.name: op for op in (
    Operation("status", NoParams, _status),
    Operation("builds", BuildsParams, _builds),
    Operation("events", EventsParams, _events),
    Operation("record", RecordParams, _record, writes=True),
    Operation("refs", RepoParams, _refs),
    Operation("lookup", LookupParams, _lookup),
    Operation("why", WhatParams, _why),
    Operation("show", WhatParams, _show),
)}


def operation(name: str) -> Operation:
    op = OPERATIONS.get(name)
    if op is None:
        raise UnknownMethod(f"unknown method {quoted(name, 40)}")
    return op


def bind(services: Services, caller: Caller, name: str, params: Mapping[str, object],
         text: bool = False) -> Callable[[], Awaitable[Any]]:
    """One operation for ``caller``, checked — it exists, the caller may run it, its parameters
    are valid (raises otherwise) — and ready to run; it returns models. ``text``: parameter
    values arrived as strings (an HTTP query string)."""
    op = operation(name)
    if op.writes and caller.uid is None:
        raise Forbidden(f"'{name}' is not served here: it is for local users (the query socket)")
    parsed = op.params.from_json(params, text=text)
    return lambda: _run(services, caller, op, parsed)


async def _run(services: Services, caller: Caller, op: Operation, parsed: Wire) -> Any:
    """``op`` within the caller's share of requests and its time bound."""
    key, seconds = (("record_seconds", services.limits.record_seconds) if op.writes
                    else ("query_seconds", services.limits.query_seconds))
    with services.admission.enter(caller):
        bound = asyncio.timeout(seconds)
        try:
            async with bound:
                return await op.run(services, caller, parsed)
        except TimeoutError:
            if not bound.expired():
                raise
            raise ServiceUnavailable(f"'{op.name}' was stopped after {seconds:g} s (limits.{key})") from None


async def call(services: Services, caller: Caller, name: str, params: Mapping[str, object],
               text: bool = False) -> Any:
    """Run one operation for ``caller``; its answer as JSON values."""
    return dump(await bind(services, caller, name, params, text)())
