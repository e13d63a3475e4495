"""The commands that ask a running service — through the query socket, or its HTTP API (``--url``,
``BUILDREF_URL``) — and ``record`` and ``import``, which are for local users (the query socket)."""

from __future__ import annotations

import argparse
import sys

from buildref.cli import render
from buildref.cli.common import client, emit, parse_time, print_json
from buildref.models import (
    BuildsParams,
    EventsParams,
    EventState,
    LookupParams,
    RecordParams,
    RepoParams,
    WhatParams,
)


def cmd_status(args: argparse.Namespace) -> int:
    return emit(args, client(args).status(), render.status)


def cmd_builds(args: argparse.Namespace) -> int:
    since = parse_time(args.since) if args.since else 0.0
    return emit(args, client(args).builds(BuildsParams(since, args.limit, args.repo)), render.builds)


def cmd_events(args: argparse.Namespace) -> int:
    state = EventState(args.state) if args.state else None
    return emit(args, client(args).events(EventsParams(state=state, limit=args.limit)), render.events)


def cmd_show(args: argparse.Namespace) -> int:
    return emit(args, client(args).show(WhatParams(args.what)), render.show)


def cmd_record(args: argparse.Namespace) -> int:
    params = RecordParams(args.repo, tuple(args.refs) if args.refs else None)
    return emit(args, client(args, local=True).record(params), render.recorded)


def cmd_refs(args: argparse.Namespace) -> int:
    return emit(args, client(args).refs(RepoParams(args.repo)), render.refs)


def cmd_lookup(args: argparse.Namespace) -> int:
    at = parse_time(args.at) if args.at else None
    params = LookupParams(args.repo, args.ref, at, args.name, args.direct, args.cached)
    return emit(args, client(args).lookup(params), render.lookup)


def cmd_why(args: argparse.Namespace) -> int:
    return emit(args, client(args).why(WhatParams(args.what)), render.why)


def cmd_import(args: argparse.Namespace) -> int:
    import time

    from buildref.client import send_event, wait_indexed
    from buildref.config import client_hook_socket
    from buildref.localstore import DrvReader, default_store_dir

    service = client(args, local=True)  # before any event is sent: a refused --url sends none
    reader = DrvReader(args.store_dir or default_store_dir())
    hook_socket = client_hook_socket(args.hook_socket)
    keys: list[tuple[str, float]] = []
    for drv in args.drvs:
        path = str(reader.drv_path(drv))
        t = time.time()
        send_event(hook_socket, path, t)  # "ok", or the error it was kept with (shown below)
        keys.append((path, t))
    states = wait_indexed(service, keys, args.timeout)
    failed = sum(s.state is not EventState.INDEXED for s in states)
    if args.json:
        print_json(states)
    else:
        for s in states:
            detail = f": {s.error}" if s.error else ""
            print(f"{s.state.value}\t{s.drv_path}{detail}")
    print(f"{len(states) - failed} of {len(args.drvs)} derivations recorded", file=sys.stderr)
    return 1 if failed or len(states) != len(args.drvs) else 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                 parent: argparse.ArgumentParser) -> None:
    def command(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_, description=description, parents=[parent])

    status = command("status", "what the service is doing",
                     "Queue depth, events received/indexed/failed (in all and since start), spool files, "
                     "last event, database size and uptime.")
    status.set_defaults(handler=cmd_status)

    builds = command("builds", "recent builds with their outputs",
                     "Recorded builds, newest first, with the outputs found in the store.")
    builds.add_argument("--since", metavar="T", help="only builds from T on: seconds since the epoch, an ISO "
                                                     "date, or an age (30m, 2h, 7d)")
    builds.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    builds.add_argument("--repo", metavar="REPO",
                        help="only builds that used a recorded revision of REPO (a configured name or path)")
    builds.set_defaults(handler=cmd_builds)

    events = command("events", "the hook events received, newest first",
                     "Each event the hook (or the spool, or `import`) delivered: when, its state (pending, "
                     "indexed, failed), where it came from (socket, spool) and, for a failed one, why.")
    events.add_argument("--state", choices=[s.value for s in EventState], help="only events in this state")
    events.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    events.set_defaults(handler=cmd_events)

    show = command("show", "what the index holds about a derivation",
                   "For a .drv path, or the path of an output of a recorded build: the derivation's name, "
                   "system, fixed output, outputs, input derivations, input sources and builds, as indexed.")
    show.add_argument("what", metavar="DRV|OUTPUT")
    show.set_defaults(handler=cmd_show)

    import_ = command("import", "record derivations built before the service ran",
                      "Send each DRV to the service as the hook would (needs access to the hook socket) and "
                      "wait until it is indexed. Outputs are recorded as built only when they are in the "
                      "store; the build time recorded is the time of the import.")
    import_.add_argument("drvs", nargs="+", metavar="DRV", help="a .drv store path")
    import_.add_argument("--hook-socket", metavar="PATH",
                         help="hook socket (default $BUILDREF_HOOK_SOCKET or /run/buildref/hook.sock)")
    import_.add_argument("--store-dir", help="Nix store directory (default $NIX_STORE_DIR or /nix/store)")
    import_.add_argument("--timeout", type=float, default=300.0,
                         help="seconds to wait for indexing (default 300)")
    import_.set_defaults(handler=cmd_import)

    record = command("record", "record where a repository's refs point, and their source paths",
                     "Ask the service to record REPO's refs (all of them and HEAD, or the REFs given): each "
                     "move of a ref is kept with the time it was seen, and for each new revision the source "
                     "store paths a build can take from it (the root and every directory, with and without "
                     "export-ignore) are computed from git objects. REPO is a configured name, an absolute "
                     "path (yours, unless you are root) or a URL (root only: mirrored under the state "
                     "directory).")
    record.add_argument("repo", metavar="REPO")
    record.add_argument("refs", nargs="*", metavar="REF", help="ref names (main, v1, refs/tags/v1, HEAD)")
    record.set_defaults(handler=cmd_record)

    refs = command("refs", "the recorded history of a repository's refs",
                   "Every recorded move of every ref of REPO: when it was seen and the revision.")
    refs.add_argument("repo", metavar="REPO")
    refs.set_defaults(handler=cmd_refs)

    lookup = command("lookup", "the builds that came from a ref",
                     "Resolve REF (branch, tag, full or short rev) of REPO as recorded, now or --at a time, "
                     "and list the builds that used its source: distance 0 uses it directly (input source, "
                     "or a fixed-output derivation whose recursive hash is the tree's), then one step per "
                     "derivation up the closure; newest first within a distance. When the revision has no "
                     "build, the newest first-parent ancestor that has one is used (fallback).")
    lookup.add_argument("repo", metavar="REPO")
    lookup.add_argument("ref", metavar="REF")
    lookup.add_argument("--at", metavar="T", help="where REF pointed at time T (epoch, ISO date, or age)")
    lookup.add_argument("--name", metavar="GLOB", help="only derivations whose name matches GLOB")
    lookup.add_argument("--direct", action="store_true", help="only derivations that use the source directly")
    lookup.add_argument("--cached", action="store_true",
                        help="only builds whose outputs are in this machine's store or in a configured "
                             "binary cache (narinfo and signature verified); the fallback too")
    lookup.set_defaults(handler=cmd_lookup)

    why = command("why", "the revision a store path came from",
                  "For an output of a recorded build: its derivation and the recorded revisions its closure "
                  "used, with the refs that pointed at them when it was built and now, and the flake.lock "
                  "pins among its sources. For a NAR hash (SRI, nix32 or hex): the repositories and "
                  "revisions whose tree has it, and the builds that used it.")
    why.add_argument("what", metavar="PATH|HASH")
    why.set_defaults(handler=cmd_why)
