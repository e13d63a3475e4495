"""The ``buildref`` command line: one module per group of commands, one function per command;
results on stdout, logs and errors on stderr (one ``error:`` line, exit 1)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from buildref import __version__
from buildref.cli import offline, queries
from buildref.cli.common import global_options
from buildref.errors import BuildrefError

Handler = Callable[[argparse.Namespace], int]


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from buildref.app import serve
    from buildref.config import load_config
    from buildref.logs import configure

    config = load_config(args.config)
    configure(args.log_format or config.log_format, config.log_level)
    asyncio.run(serve(config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buildref",
        description="Find the Nix build that came from a git ref, and the commit a store path came from.",
        epilog="The query commands (status, builds, events, show, refs, lookup, why) ask the service on "
               "its query socket (--socket, $BUILDREF_SOCKET), or its HTTP API when --url or $BUILDREF_URL "
               "is given (http://buildhost:8745): a deploy host needs no service of its own. record and "
               "import are for local users, on the query socket.",
    )
    parser.add_argument("--version", action="version", version=f"buildref {__version__}")
    global_options(parser, top=True)
    parent = argparse.ArgumentParser(add_help=False)
    global_options(parent, top=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    offline.add_commands(commands, parent)
    serve = commands.add_parser(
        "serve", help="run the service: record every build the hook reports",
        description=(
            "Run the buildref service: listen on the hook socket (events from buildref-hook, Nix's "
            "post-build-hook) and the query socket, drain the spool directory, and index each built "
            "derivation, with its input closure, into the database. Uses systemd socket activation "
            "when started by systemd (sockets named 'hook' and 'query'), else creates the sockets. "
            "With [http] listen = \"127.0.0.1:8745\" in the config, also serves the read-only HTTP API "
            "(/api/v1/lookup, why, builds, status, events, refs, show) and Prometheus metrics (/metrics). "
            "SIGTERM finishes queued work and exits 0."
        ),
    )
    serve.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")
    serve.add_argument("--log-format", choices=["console", "json"], help="overrides [log] format")
    serve.set_defaults(handler=cmd_serve)
    queries.add_commands(commands, parent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except BuildrefError as e:
        print(str(e), file=sys.stderr)
        return 1
    except OSError as e:
        where = f" '{e.filename}'" if e.filename else ""
        print(f"error: cannot access{where}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
