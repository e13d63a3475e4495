"""Talking to a running ``buildref serve``: queries answered as models, over one of two transports
— the query socket (JSON-RPC shaped lines) or the HTTP API (``--url``, ``BUILDREF_URL``), whose
error answers become the same errors — and events over the hook socket (``buildref import``: the
hook's own pipeline)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from buildref import __version__
from buildref.api import httpwire, rpc
from buildref.api.sockets import request
from buildref.errors import BuildrefError, ServiceUnavailable
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


class Transport(Protocol):
    def call(self, method: str, params: Wire) -> Any:
        """The answer's JSON; an error answer is raised as the error of its kind."""


class SocketTransport:
    """The query socket: one JSON-RPC line each way."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method: str, params: Wire) -> Any:
        answer = request(self.socket_path, rpc.request_line(method, params.to_json()), self.timeout)
        return rpc.parse_response(answer)


class HttpTransport:
    """The HTTP API: ``GET {url}/api/v1/{method}?{params}``; urllib from the standard library,
    imported at the first request (the command line stays quick to start)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise BuildrefError(f"'{url[:200]}' is not a buildref URL: give http://HOST:PORT "
                                "(--url or BUILDREF_URL)")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, params: Wire) -> Any:
        import http.client
        import urllib.error
        import urllib.request

        query = httpwire.query_string(params.to_json())
        target = f"{self.url}{httpwire.API_PREFIX}{method}" + (f"?{query}" if query else "")
        asked = urllib.request.Request(target, headers={"Accept": "application/json",
                                                        "User-Agent": f"buildref/{__version__}"})
        try:
            with urllib.request.urlopen(asked, timeout=self.timeout) as answer:
                body = answer.read()
        except urllib.error.HTTPError as e:
            with e:
                raise httpwire.error_from(e.code, e.read(), self.url) from None
        except urllib.error.URLError as e:
            reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
            if isinstance(e.reason, TimeoutError):
                reason = f"no answer within {self.timeout:.0f} s"
            raise ServiceUnavailable(f"cannot reach buildref at {self.url}: {reason}") from None
        except TimeoutError:
            raise ServiceUnavailable(f"buildref at {self.url} did not answer within {self.timeout:.0f} s"
                                     ) from None
        except OSError as e:  # the connection dropped mid-answer, ...
            raise ServiceUnavailable(f"buildref at {self.url}: {e.strerror or e}") from None
        except http.client.HTTPException as e:  # not HTTP at all, or cut short
            raise ServiceUnavailable(f"buildref at {self.url} did not answer in HTTP "
                                     f"({type(e).__name__})") from None
        try:
            return json.loads(body)
        except ValueError:
            raise ServiceUnavailable(f"buildref at {self.url} answered, but not in JSON") from None


class QueryClient:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def call(self, method: str, params: Wire) -> Any:
        """The answer's JSON; an error answer is raised as the error of its kind."""
        return self.transport.call(method, params)

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
