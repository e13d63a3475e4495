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
    """``--socket`` and ``--json``, on the top parser (with defaults) and on every subcommand
    (without: a subcommand that does not see the option leaves the top parser's value)."""
    default = (lambda value: value) if top else (lambda _: argparse.SUPPRESS)
    parser.add_argument("--socket", metavar="PATH", default=default(None),
                        help="query socket (default $BUILDREF_SOCKET or /run/buildref/query.sock)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON on stdout")


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(dump(value), indent=2) + "\n")


def client(args: argparse.Namespace) -> QueryClient:
    from buildref.client import QueryClient
    from buildref.config import client_socket

    return QueryClient(client_socket(args.socket))


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
