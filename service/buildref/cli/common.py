"""What the commands share: options accepted before or after the subcommand, printing, times."""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any

from buildref.errors import BuildrefError
from buildref.models import dump

if TYPE_CHECKING:
    from buildref.client import QueryClient


def global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--socket``, ``--url`` and ``--json``, on the top parser (with defaults) and on every
    subcommand (without: a subcommand that does not see the option leaves the top parser's value)."""
    default = (lambda value: value) if top else (lambda _: argparse.SUPPRESS)
    parser.add_argument("--socket", metavar="PATH", default=default(None),
                        help="query socket (default $BUILDREF_SOCKET or /run/buildref/query.sock)")
    parser.add_argument("--url", metavar="URL", default=default(None),
                        help="ask the HTTP API of a buildref service instead of a query socket, e.g. "
                             "http://buildhost:8745 (default $BUILDREF_URL; not for record and import)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON on stdout")


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(dump(value), indent=2) + "\n")


def client(args: argparse.Namespace, *, local: bool = False) -> QueryClient:
    """The service to ask: ``--url`` or ``--socket`` as given, else ``$BUILDREF_URL``, else the
    query socket. ``local``: a command for local users only (``record``, ``import``), which always
    asks the query socket."""
    from buildref.client import HttpTransport, QueryClient, SocketTransport
    from buildref.config import client_socket, client_url

    if args.url and args.socket:
        raise BuildrefError("give --socket or --url, not both")
    if local:
        if args.url:
            raise BuildrefError(f"'{args.command}' asks the local service on its query socket; --url is for "
                                "lookup, why, builds, status, events, refs and show")
        return QueryClient(SocketTransport(client_socket(args.socket)))
    url = None if args.socket else client_url(args.url)
    if url is not None:
        return QueryClient(HttpTransport(url))
    return QueryClient(SocketTransport(client_socket(args.socket)))


def when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_time(text: str) -> float:
    """Seconds since the epoch, an ISO 8601 date/time (UTC unless it says), or an age: 90s, 30m, 2h, 7d."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return time.time() - float(m.group(1)) * unit
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise BuildrefError(f"'{text[:100]}' is not a time: give seconds since the epoch, an ISO date, "
                            "or an age like 30m, 2h, 7d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def emit(args: argparse.Namespace, result: Any, render: Any) -> int:
    """``--json``: the model as JSON; otherwise ``render(result)`` prints it for people."""
    if args.json:
        print_json(result)
    else:
        render(result)
    return 0
