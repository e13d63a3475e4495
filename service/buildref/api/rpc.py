"""The query socket's protocol: JSON-RPC 2.0 shaped requests, one per line, one answer line each;
and the one mapping from an error's kind to a JSON-RPC code (and back, for the client)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from buildref.errors import BuildrefError, Kind, error_of_kind

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# server-defined codes (JSON-RPC leaves -32000..-32099 to servers)
NOT_FOUND = -32004
FORBIDDEN = -32003
UNAVAILABLE = -32005

_CODES = {Kind.INVALID: INVALID_PARAMS, Kind.NOT_FOUND: NOT_FOUND, Kind.FORBIDDEN: FORBIDDEN,
          Kind.UNAVAILABLE: UNAVAILABLE, Kind.INTERNAL: INTERNAL_ERROR}
_KINDS = {**{code: kind for kind, code in _CODES.items()}, PARSE_ERROR: Kind.INVALID,
          INVALID_REQUEST: Kind.INVALID, METHOD_NOT_FOUND: Kind.NOT_FOUND}


class RequestError(BuildrefError):
    """A line that is not a request at all: it has its own JSON-RPC code."""

    def __init__(self, code: int, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    id: Any
    method: str
    params: Mapping[str, Any]


def code_of(error: BuildrefError, unknown_method: type[BuildrefError]) -> int:
    if isinstance(error, RequestError):
        return error.code
    if isinstance(error, unknown_method):
        return METHOD_NOT_FOUND
    return _CODES[error.kind]


def error_from(code: object, message: str) -> BuildrefError:
    """The error a client raises for an error answer."""
    kind = _KINDS.get(code, Kind.INTERNAL) if isinstance(code, int) else Kind.INTERNAL
    return error_of_kind(kind, message)


def parse_request(line: bytes) -> Request:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise RequestError(PARSE_ERROR, f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise RequestError(INVALID_REQUEST, "a request is a JSON object")
    request_id = data.get("id")
    if isinstance(request_id, dict | list):
        raise RequestError(INVALID_REQUEST, "'id' must be a string, number or null")
    method = data.get("method")
    if not isinstance(method, str):
        raise RequestError(INVALID_REQUEST, "'method' must be a string", request_id)
    params = data.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError(INVALID_PARAMS, "'params' must be an object", request_id)
    return Request(request_id, method, params)


def response(request_id: Any, result: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode() + b"\n"


def error_response(request_id: Any, code: int, message: str) -> bytes:
    error = {"code": code, "message": message}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode() + b"\n"


def request_line(method: str, params: Mapping[str, Any], request_id: int = 1) -> bytes:
    request = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": dict(params)}
    return json.dumps(request).encode() + b"\n"


def parse_response(answer: bytes) -> Any:
    """The result of an answer line; raises the error it carries."""
    try:
        reply = json.loads(answer)
    except ValueError:
        raise error_of_kind(Kind.UNAVAILABLE, "the service answered, but not in JSON") from None
    if not isinstance(reply, dict):
        raise error_of_kind(Kind.UNAVAILABLE, "the service answered something unexpected")
    error = reply.get("error")
    if isinstance(error, dict):
        raise error_from(error.get("code"), str(error.get("message", "unknown failure")))
    return reply.get("result")


Dispatch = Callable[[Request, int], Awaitable[Any]]
OnError = Callable[[str, BuildrefError | Exception], None]


async def answer(line: bytes, uid: int, dispatch: Dispatch, unknown_method: type[BuildrefError],
                 on_error: OnError) -> bytes:
    """One request line in, one answer line out; never raises (a bug is answered as one)."""
    request_id = None
    try:
        request = parse_request(line)
        request_id = request.id
        return response(request_id, await dispatch(request, uid))
    except RequestError as e:
        on_error("bad query", e)
        return error_response(e.request_id if request_id is None else request_id, e.code, str(e))
    except BuildrefError as e:
        if e.kind is Kind.INVALID or isinstance(e, unknown_method):
            on_error("bad query", e)
        return error_response(request_id, code_of(e, unknown_method), str(e))
    except Exception as e:  # a bug must not take the service down; the caller hears of it
        on_error("query failed", e)
        return error_response(request_id, INTERNAL_ERROR, f"error: internal error ({type(e).__name__})")
