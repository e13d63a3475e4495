"""The query socket's protocol: JSON-RPC 2.0 shaped requests, one per line, one answer line each;
and the one mapping from an error's kind to a JSON-RPC code (and back, for the client).

An answer never echoes more of a request than a short prefix: the ``id`` is bounded, and every
error message is cut to `errors.MAX_MESSAGE` bytes of JSON. Work whose size a client chooses — a
long request line to parse and check, a long answer to encode — runs in the ``wire`` executor,
never on the event loop the hook socket is answered from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from buildref.errors import BuildrefError, Kind, UnknownMethod, bounded, clients_mistake, error_of_kind
from buildref.models import Wire, dump

T = TypeVar("T")

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


MAX_ID = 100  # characters in a string id (an id is echoed in the answer)
BIG_LINE = 16 * 1024  # bytes: a longer request is parsed and checked off the event loop
BIG_ANSWER = 200  # items: an answer with more is encoded off the event loop


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


def code_of(error: BuildrefError) -> int:
    if isinstance(error, UnknownMethod):
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
    if (isinstance(request_id, dict | list) or (isinstance(request_id, str) and len(request_id) > MAX_ID)
            or (isinstance(request_id, int) and not -(1 << 63) <= request_id < 1 << 63)):
        raise RequestError(INVALID_REQUEST, f"'id' must be a string of at most {MAX_ID} characters, "
                                            "a 64-bit number or null")
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
    """The answer line of a result (models are dumped to JSON values here)."""
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": dump(result)}).encode() + b"\n"


def error_response(request_id: Any, code: int, message: str) -> bytes:
    error = {"code": code, "message": bounded(message)}
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


# A request checked (method, caller, parameters: raises when it cannot run), ready to run.
Prepare = Callable[[Request, int], Callable[[], Awaitable[Any]]]
OnError = Callable[[str, BuildrefError | Exception], None]


def weight(result: Any) -> int:
    """About how many items an answer holds (its lists, one level down)."""
    if isinstance(result, list | tuple | dict):
        return len(result)
    if isinstance(result, Wire):
        values = (getattr(result, f.name) for f in dataclasses.fields(result))  # type: ignore[arg-type]
        return sum(len(v) for v in values if isinstance(v, list | tuple | dict))
    return 1


async def off_loop(wire: Executor | None, big: bool, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` here when it is small, else in the ``wire`` executor (None: asyncio's)."""
    if not big:
        return work(*args)
    return await asyncio.get_running_loop().run_in_executor(wire, partial(work, *args))


async def answer(line: bytes, uid: int, prepare: Prepare, on_error: OnError, wire: Executor) -> bytes:
    """One request line in, one answer line out; never raises (a bug is answered as one)."""
    request_id = None
    big = len(line) > BIG_LINE
    try:
        request = await off_loop(wire, big, parse_request, line)
        request_id = request.id
        run = await off_loop(wire, big, prepare, request, uid)
        result = await run()
        return await off_loop(wire, weight(result) > BIG_ANSWER, response, request_id, result)
    except RequestError as e:
        on_error("bad query", e)
        return error_response(e.request_id if request_id is None else request_id, e.code, str(e))
    except BuildrefError as e:
        if clients_mistake(e):
            on_error("bad query", e)
        return error_response(request_id, code_of(e), str(e))
    except Exception as e:  # a bug must not take the service down; the caller hears of it
        on_error("query failed", e)
        return error_response(request_id, INTERNAL_ERROR, f"error: internal error ({type(e).__name__})")
