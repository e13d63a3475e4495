"""The two wire protocols, as pure functions over one line of bytes.

Hook socket: one JSON object per line, ``{"v":1,"drv":...,"outs":[...],"t":...}``; the service
answers ``ok`` once the event is durable, or ``error: ...`` (the event is then kept as failed).
Query socket: JSON-RPC 2.0 shaped requests, one per line, one response line each.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypedDict

from buildref.errors import BadRequest, BadStorePath
from buildref.nix.storepath import StorePath

MAX_LINE = 1 << 20  # bytes; a longer line is refused, not buffered

# JSON-RPC 2.0 error codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
SERVER_ERROR = -32000


@dataclass(frozen=True, slots=True)
class HookEvent:
    drv: str
    outs: tuple[str, ...]
    t: float


def _loads(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"not JSON: {e}") from None


def parse_event(line: bytes, store_dir: str) -> HookEvent:
    """A well-formed hook event whose drv path is a derivation in ``store_dir``."""
    data = _loads(line)
    if not isinstance(data, dict):
        raise BadRequest("an event is a JSON object")
    if data.get("v") != 1:
        raise BadRequest(f"unsupported event version {data.get('v')!r} (this service speaks v1)")
    drv, outs, t = data.get("drv"), data.get("outs", []), data.get("t")
    if not isinstance(drv, str):
        raise BadRequest("event field 'drv' must be a string")
    if not isinstance(outs, list) or not all(isinstance(o, str) for o in outs):
        raise BadRequest("event field 'outs' must be a list of strings")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise BadRequest("event field 't' must be a number (seconds since the epoch)")
    try:
        path = StorePath.parse(drv, store_dir)
    except BadStorePath as e:
        raise BadRequest(e.args[0]) from None
    if not path.is_derivation:
        raise BadRequest(f"'{drv}' is not a derivation (.drv)")
    return HookEvent(drv, tuple(outs), float(t))


def salvage_event(line: bytes) -> tuple[str, float]:
    """What a malformed event can still tell (drv text and time), to keep it with its error."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        data = None
    drv = data.get("drv") if isinstance(data, dict) else None
    t = data.get("t") if isinstance(data, dict) else None
    if not isinstance(drv, str):
        drv = line[:512].decode(errors="replace")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        t = -1.0
    return drv[:4096], float(t)


class RpcError(TypedDict):
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Request:
    id: Any
    method: str
    params: dict[str, Any]


class RequestError(Exception):
    """A request that cannot be served, with its JSON-RPC code; ``id`` when it could be read."""

    def __init__(self, code: int, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def parse_request(line: bytes) -> Request:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise RequestError(PARSE_ERROR, f"error: not JSON: {e}") from None
    if not isinstance(data, dict):
        raise RequestError(INVALID_REQUEST, "error: a request is a JSON object")
    request_id = data.get("id")
    if isinstance(request_id, dict | list):
        raise RequestError(INVALID_REQUEST, "error: 'id' must be a string, number or null")
    method = data.get("method")
    if not isinstance(method, str):
        raise RequestError(INVALID_REQUEST, "error: 'method' must be a string", request_id)
    params = data.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError(INVALID_PARAMS, "error: 'params' must be an object", request_id)
    return Request(request_id, method, params)


def response(request_id: Any, result: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode() + b"\n"


def error_response(request_id: Any, code: int, message: str) -> bytes:
    error: RpcError = {"code": code, "message": message}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode() + b"\n"


def request_line(method: str, params: dict[str, Any], request_id: int = 1) -> bytes:
    request = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    return json.dumps(request).encode() + b"\n"
