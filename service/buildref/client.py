"""Talking to a running ``buildref serve``: queries over the query socket (JSON-RPC shaped lines),
answered as models; events over the hook socket (``buildref import``: the hook's own pipeline)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from buildref.api import rpc
from buildref.api.sockets import request
from buildref.hook import encode_event
from buildref.models import (
    Build,
    BuildsParams,
    DerivationInfo,
    Event,
    EventsParams,
    EventState,
    Lookup,
    LookupParams,
    MatchedBuild,
    NoParams,
    Recorded,
    RecordParams,
    RefMove,
    RepoParams,
    Status,
    WhatParams,
    Why,
    Wire,
    why_from_json,
)


class QueryClient:
    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method: str, params: Wire) -> Any:
        """The answer's JSON; an error answer is raised as the error of its kind."""
        answer = request(self.socket_path, rpc.request_line(method, params.to_json()), self.timeout)
        return rpc.parse_response(answer)

    def _list(self, method: str, params: Wire) -> list[Any]:
        result = self.call(method, params)
        return result if isinstance(result, list) else []

    def status(self) -> Status:
        return Status.from_json(self.call("status", NoParams()))

    def builds(self, p: BuildsParams) -> list[Build]:
        model = MatchedBuild if p.repo is not None else Build
        return [model.from_json(b) for b in self._list("builds", p)]

    def events(self, p: EventsParams) -> list[Event]:
        return [Event.from_json(e) for e in self._list("events", p)]

    def record(self, p: RecordParams) -> Recorded:
        return Recorded.from_json(self.call("record", p))

    def refs(self, p: RepoParams) -> list[RefMove]:
        return [RefMove.from_json(m) for m in self._list("refs", p)]

    def lookup(self, p: LookupParams) -> Lookup:
        return Lookup.from_json(self.call("lookup", p))

    def why(self, p: WhatParams) -> Why:
        return why_from_json(self.call("why", p))

    def show(self, p: WhatParams) -> DerivationInfo:
        return DerivationInfo.from_json(self.call("show", p))


def send_event(hook_socket: str, drv: str, t: float, timeout: float = 10.0) -> str:
    """Hand one event to the service as the hook does; its answer (``ok`` or ``error: ...``)."""
    return request(hook_socket, encode_event(drv, [], t), timeout).decode(errors="replace").strip()


def wait_indexed(client: QueryClient, keys: Sequence[tuple[str, float]], timeout: float) -> list[Event]:
    """Poll until none of the events ``keys`` is pending (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        states = client.events(EventsParams(keys=tuple(keys)))
        if all(e.state is not EventState.PENDING for e in states) or time.monotonic() > deadline:
            return states
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
