"""Talking to a running ``buildref serve``: queries over the query socket (JSON-RPC shaped lines),
and events over the hook socket (``buildref import``: the same pipeline as the hook)."""

from __future__ import annotations

import json
import time
from typing import Any

from buildref.errors import BuildrefError, ServiceUnavailable
from buildref.hook import encode_event
from buildref.protocol import request_line
from buildref.sockets import request


class QueryClient:
    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        answer = request(self.socket_path, request_line(method, params or {}), self.timeout)
        try:
            reply = json.loads(answer)
        except ValueError:
            raise ServiceUnavailable(f"buildref at {self.socket_path} answered, but not in JSON") from None
        if not isinstance(reply, dict):
            raise ServiceUnavailable(f"buildref at {self.socket_path} answered something unexpected")
        if "error" in reply:
            message = str(reply["error"].get("message", "unknown failure"))
            raise BuildrefError(message.removeprefix("error: "))
        return reply.get("result")


def send_event(hook_socket: str, drv: str, t: float, timeout: float = 10.0) -> str:
    """Hand one event to the service as the hook does; its answer (``ok`` or ``error: ...``)."""
    return request(hook_socket, encode_event(drv, [], t), timeout).decode(errors="replace").strip()


def wait_indexed(client: QueryClient, keys: list[tuple[str, float]], timeout: float) -> list[dict[str, Any]]:
    """Poll until none of the events ``keys`` is pending (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        states: list[dict[str, Any]] = client.call("events", {"events": [list(k) for k in keys]})
        if all(s["state"] != "pending" for s in states) or time.monotonic() > deadline:
            return states
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
