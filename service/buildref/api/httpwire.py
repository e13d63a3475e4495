"""The HTTP API's wire, shared by the server (``api/http.py``) and the client: where an operation
lives (``/api/v1/{method}``), how parameters travel (a query string), the error body
``{"error": "error: ..."}``, and the one mapping from an error's kind to an HTTP status (and back).

It imports neither aiohttp nor urllib.request, so the command line pays for neither.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from buildref.errors import BuildrefError, Kind, bounded, error_of_kind

API_PREFIX = "/api/v1/"
METRICS_PATH = "/metrics"

STATUS_OF_KIND = {Kind.INVALID: 400, Kind.NOT_FOUND: 404, Kind.FORBIDDEN: 403, Kind.UNAVAILABLE: 503,
                  Kind.INTERNAL: 500}
_KIND_OF_STATUS = {status: kind for kind, status in STATUS_OF_KIND.items()}


def error_body(message: str) -> bytes:
    return json.dumps({"error": bounded(message)}).encode()


def query_string(params: Mapping[str, Any]) -> str:
    """``params`` (a request model's JSON) as a query string, in the form the models read back
    with ``text=True``: absent for None, ``true``/``false``, numbers as Python prints them (a float
    round-trips exactly). A list cannot travel in a URL: the operations that take one are asked on
    the query socket."""
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            pairs.append((key, "true" if value else "false"))
        elif isinstance(value, str | int | float):
            pairs.append((key, str(value)))
        else:
            raise BuildrefError(f"'{key}' cannot be given in a URL: ask the query socket (--socket)")
    return urlencode(pairs)


def kind_of_status(status: int) -> Kind:
    kind = _KIND_OF_STATUS.get(status)
    if kind is not None:
        return kind
    # statuses buildref does not send come from something in between (a proxy) or aiohttp itself
    return Kind.INVALID if 400 <= status < 500 else Kind.UNAVAILABLE


def error_from(status: int, body: bytes, where: str) -> BuildrefError:
    """The error a client raises for an HTTP error answer: buildref's own message when the body
    is buildref's error object, else one that names the status."""
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    if not isinstance(message, str) or not message.startswith("error: "):
        message = f"error: buildref at {where} answered HTTP {status} without an answer from buildref"
    return error_of_kind(kind_of_status(status), message)
