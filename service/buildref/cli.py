"""The ``buildref`` command line: one function per subcommand; results on stdout, logs on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from buildref import __version__
from buildref.errors import BuildrefError

if TYPE_CHECKING:
    from buildref.client import QueryClient

Handler = Callable[[argparse.Namespace], int]


class SourceJson(TypedDict):
    rev: str
    narHash: str
    storePath: str
    lastModified: int
    revCount: int
    narSize: int
    rule: str


class PathJson(TypedDict):
    narHash: str
    storePath: str
    narSize: int


class MismatchJson(TypedDict):
    what: str
    recorded: str
    computed: str


class VerifyJson(TypedDict):
    drvPath: str
    ok: bool
    mismatches: list[MismatchJson]


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _print_result(args: argparse.Namespace, result: SourceJson | PathJson) -> None:
    """One JSON object with --json, else one ``key<TAB>value`` line per field."""
    if args.json:
        _print_json(result)
    else:
        for key, value in result.items():
            print(f"{key}\t{value}")


def cmd_hash(args: argparse.Namespace) -> int:
    from buildref.localstore import default_store_dir

    store_dir = args.store_dir or default_store_dir()
    if args.path is not None:
        return _hash_path(args, store_dir)
    if args.repo is None:
        raise BuildrefError("give a repository, or --path PATH for a file or directory")

    from buildref.git.source import GitRepository
    from buildref.git.tree_nar import TreeRule

    info = GitRepository(args.repo, store_dir).source(args.rev, args.subdir, TreeRule(args.rule))
    result: SourceJson = {
        "rev": info.rev,
        "narHash": info.nar_hash.sri,
        "storePath": info.store_path,
        "lastModified": info.last_modified,
        "revCount": info.rev_count,
        "narSize": info.nar_size,
        "rule": info.rule.value,
    }
    _print_result(args, result)
    return 0


def _hash_path(args: argparse.Namespace, store_dir: str) -> int:
    import os

    from buildref.nix.nar import hash_path
    from buildref.nix.storepath import check_name, source_path

    if args.repo is not None or args.subdir is not None or args.rev != "HEAD":
        raise BuildrefError("--path hashes a file or directory; it takes no repository, --rev or --subdir")
    name = check_name(args.name or os.path.basename(os.path.normpath(args.path)))
    info = hash_path(args.path)
    result: PathJson = {
        "narHash": info.nar_hash.sri,
        "storePath": source_path(info.nar_hash, name, store_dir=store_dir),
        "narSize": info.nar_size,
    }
    _print_result(args, result)
    return 0


def cmd_drv_show(args: argparse.Namespace) -> int:
    from buildref.drvshow import show
    from buildref.localstore import DrvReader, default_store_dir

    reader = DrvReader(args.store_dir or default_store_dir())
    sys.stdout.buffer.write(show(reader, args.drvs, args.recursive))
    return 0


def cmd_drv_verify(args: argparse.Namespace) -> int:
    from buildref.localstore import DrvReader, default_store_dir
    from buildref.nix.drvhash import DrvHasher, verify

    reader = DrvReader(args.store_dir or default_store_dir())
    hasher = DrvHasher(reader.load, reader.store_dir, reader.split)
    paths = reader.select(args.drvs, args.recursive)
    results: list[VerifyJson] = []
    failed = 0
    for path in paths:
        data, drv = reader.read(path)
        mismatches = verify(path, data, drv, hasher)
        failed += bool(mismatches)
        results.append({
            "drvPath": path,
            "ok": not mismatches,
            "mismatches": [
                {"what": m.what, "recorded": m.recorded, "computed": m.computed} for m in mismatches
            ],
        })
        if not args.json:
            for m in mismatches:
                print(f"mismatch: {m}")
    if args.json:
        _print_json(results)
    print(f"{len(paths) - failed} of {len(paths)} derivations verified", file=sys.stderr)
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from buildref.config import load_config
    from buildref.logs import configure
    from buildref.service import Service

    config = load_config(args.config)
    configure(args.log_format or config.log_format, config.log_level)
    asyncio.run(Service(config).run())
    return 0


def _client(args: argparse.Namespace) -> QueryClient:
    from buildref.client import QueryClient
    from buildref.config import client_socket

    return QueryClient(client_socket(args.socket))


def _query(args: argparse.Namespace, method: str, params: dict[str, object] | None = None) -> Any:
    """Ask the service; with --json, print its answer and return None (the caller is done)."""
    result = _client(args).call(method, params)
    if args.json:
        _print_json(result)
        return None
    return result


def _when(value: float | None) -> str:
    import datetime

    if value is None:
        return "-"
    return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_time(text: str) -> float:
    """Seconds since the epoch, an ISO 8601 date/time (UTC unless it says), or an age: 90s, 30m, 2h, 7d."""
    import datetime
    import re
    import time

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
        raise BuildrefError(f"'{text}' is not a time: give seconds since the epoch, an ISO date, "
                            "or an age like 30m, 2h, 7d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def cmd_status(args: argparse.Namespace) -> int:
    status = _query(args, "status")
    if status is None:
        return 0
    events, since = status["events"], status["sinceStart"]
    db = status["database"]
    last = status["lastEvent"]
    lines = [
        f"service      buildref {status['version']}, pid {status['pid']}, up {status['uptime']:.0f} s",
        f"queue        {status['queueDepth']} event(s) waiting",
        f"events       {events['received']} received, {events['indexed']} indexed, "
        f"{events['failed']} failed, {events['pending']} pending",
        f"since start  {since['received']} received, {since['indexed']} indexed, {since['failed']} failed",
        f"spool        {status['spoolFiles']} file(s)",
        f"database     {db['path']} ({db['bytes']} bytes): {db['derivations']} derivations, "
        f"{db['outputs']} outputs, {db['builds']} builds",
        "last event   "
        + ("-" if last is None else f"{_when(last['receivedAt'])} {last['state']} {last['drvPath']}"),
    ]
    print("\n".join(lines))
    return 0


def cmd_builds(args: argparse.Namespace) -> int:
    since = parse_time(args.since) if args.since else 0.0
    params: dict[str, object] = {"since": since, "limit": args.limit}
    if args.repo:
        params["repository"] = args.repo
    builds = _query(args, "builds", params)
    if builds is None:
        return 0
    for build in builds:
        outs = " ".join(f"{name}={path}" for name, path in build["outputs"].items())
        outs = outs or "(no outputs in store)"
        print(f"{_when(build['builtAt'])}  {build['drvPath']}  {outs}")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    result = _query(args, "record", {"repository": args.repo, "refs": args.refs or None})
    if result is None:
        return 0
    for ref, rev in result["refs"].items():
        print(f"{rev}\t{ref}")
    print(f"{len(result['moved'])} ref move(s) recorded; {result['revisionsIndexed']} new revision(s), "
          f"{result['sourcesIndexed']} source path(s) indexed", file=sys.stderr)
    return 0


def cmd_refs(args: argparse.Namespace) -> int:
    history = _query(args, "refs", {"repository": args.repo})
    if history is None:
        return 0
    for move in history:
        print(f"{_when(move['seenAt'])}  {move['rev'] or '(deleted)'}  {move['ref']}")
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    params: dict[str, object] = {"repository": args.repo, "ref": args.ref, "direct": args.direct}
    if args.at:
        params["at"] = parse_time(args.at)
    if args.name:
        params["name"] = args.name
    result = _query(args, "lookup", params)
    if result is None:
        return 0
    print(f"{result['repository']} {result['ref']} = {result['rev']}")
    if result["fallback"]:
        fallback = result["fallback"]
        print(f"no build of {result['rev'][:12]} yet; newest built ancestor {fallback['rev']} "
              f"({fallback['commitsBehind']} commit(s) behind)")
    for build in result["builds"]:
        outs = " ".join(f"{name}={path}" for name, path in sorted(build["outputs"].items()))
        state = "" if build["valid"] else "  (not in the store any more)"
        print(f"distance {build['distance']}  {build['drvPath']}  {outs}{state}")
    if not result["builds"]:
        print("no builds found")
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    result = _query(args, "why", {"what": args.what})
    if result is None:
        return 0
    if "path" in result:
        print(f"{result['path']} is output '{result['output']}' of {result['drvPath']}"
              f" (built {_when(result['builtAt'])})")
    for source in result["sources"]:
        where = f"/{source['subdir']}" if source["subdir"] else ""
        refs = ", ".join(source["refs"]) or "no ref"
        print(f"{source['repository']}{where} at {source['rev']} ({refs}): {source['storePath']}")
    if not result["sources"]:
        print("no recorded revision")
    for build in result.get("builds", []):
        print(f"used by {build['drvPath']} (distance {build['distance']})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    import time

    from buildref.client import send_event, wait_indexed
    from buildref.config import client_hook_socket
    from buildref.localstore import DrvReader, default_store_dir

    reader = DrvReader(args.store_dir or default_store_dir())
    hook_socket = client_hook_socket(args.hook_socket)
    keys: list[tuple[str, float]] = []
    refused = []
    for drv in args.drvs:
        path = str(reader.drv_path(drv))
        t = time.time()
        answer = send_event(hook_socket, path, t)
        keys.append((path, t))
        if answer != "ok":
            refused.append(path)
    states = wait_indexed(_client(args), keys, args.timeout)
    failed = sum(s["state"] != "indexed" for s in states)
    if args.json:
        _print_json(states)
    else:
        for s in states:
            detail = f": {s['error']}" if s["error"] else ""
            print(f"{s['state']}\t{s['drvPath']}{detail}")
    print(f"{len(states) - failed} of {len(args.drvs)} derivations recorded", file=sys.stderr)
    return 1 if failed or len(states) != len(args.drvs) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buildref",
        description="Find the Nix build that came from a git ref, and the commit a store path came from.",
    )
    parser.add_argument("--version", action="version", version=f"buildref {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hash_ = commands.add_parser(
        "hash",
        help="narHash and store path of a git revision, a directory in it, or a local path",
        description=(
            "Print what builtins.fetchGit gives for REPO at REV (no checkout, no Nix needed): "
            "rev, narHash (SRI), storePath, lastModified, revCount. With --subdir, the directory "
            "as Nix copies ./DIR out of the fetched tree (store path named after it). With --path, "
            "the narHash and store path of a local file or directory."
        ),
    )
    hash_.add_argument("repo", nargs="?", metavar="REPO", help="path of a git repository")
    hash_.add_argument("--rev", default="HEAD", help="revision: hash, branch, tag, HEAD~2... (default HEAD)")
    hash_.add_argument("--subdir", metavar="DIR", help="a directory (or file) inside the revision")
    hash_.add_argument(
        "--rule", choices=["export-ignore", "raw"], default="export-ignore",
        help="export-ignore: leave out what .gitattributes marks export-ignore, as builtins.fetchGit "
             "and Nix <= 2.19 do (default); raw: the tree as committed, as flake inputs on Nix >= 2.20",
    )
    hash_.add_argument("--path", metavar="PATH", help="hash a local file or directory instead")
    hash_.add_argument("--name", help="store path name for --path (default: its base name)")
    hash_.add_argument("--store-dir", help="Nix store directory (default $NIX_STORE_DIR or /nix/store)")
    hash_.add_argument("--json", action="store_true", help="print one JSON object")
    hash_.set_defaults(handler=cmd_hash)

    drv = commands.add_parser("drv", help="read and check .drv files").add_subparsers(
        dest="drv_command", required=True, metavar="SUBCOMMAND"
    )
    show = drv.add_parser(
        "show", help="print derivations as `nix show-derivation` does",
        description="Print the JSON `nix show-derivation` prints (Nix 2.8 shape), keyed by drv path.",
    )
    verify = drv.add_parser(
        "verify", help="recompute output paths and drv paths; exit 1 on any mismatch",
        description=(
            "Recompute each derivation's output paths (hashDerivationModulo, fixed-output paths) "
            "and its own store path from its contents; print one line per mismatch; exit 0 only "
            "when everything matches."
        ),
    )
    for sub, handler in ((show, cmd_drv_show), (verify, cmd_drv_verify)):
        sub.add_argument("drvs", nargs="+", metavar="DRV", help="a .drv store path")
        sub.add_argument("-r", "--recursive", action="store_true",
                         help="include every derivation the given ones depend on")
        sub.add_argument("--store-dir", help="Nix store directory (default $NIX_STORE_DIR or /nix/store)")
        sub.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        sub.set_defaults(handler=handler)

    serve = commands.add_parser(
        "serve", help="run the service: record every build the hook reports",
        description=(
            "Run the buildref service: listen on the hook socket (events from buildref-hook, Nix's "
            "post-build-hook) and the query socket, drain the spool directory, and index each built "
            "derivation, with its input closure, into the database. Uses systemd socket activation "
            "when started by systemd (sockets named 'hook' and 'query'), else creates the sockets. "
            "SIGTERM finishes queued work and exits 0."
        ),
    )
    serve.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")
    serve.add_argument("--log-format", choices=["console", "json"], help="overrides [log] format")
    serve.set_defaults(handler=cmd_serve)

    def client_command(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=description)
        sub.add_argument("--socket", metavar="PATH",
                         help="query socket (default $BUILDREF_SOCKET or /run/buildref/query.sock)")
        sub.add_argument("--json", action="store_true", help="print JSON")
        return sub

    status = client_command(
        "status", "what the service is doing",
        "Queue depth, events received/indexed/failed (in all and since start), spool files, "
        "last event, database size and uptime.",
    )
    status.set_defaults(handler=cmd_status)

    builds = client_command("builds", "recent builds with their outputs",
                            "Recorded builds, newest first, with the outputs found in the store.")
    builds.add_argument("--since", metavar="T",
                        help="only builds from T on: seconds since the epoch, an ISO date, "
                             "or an age (30m, 2h, 7d)")
    builds.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    builds.add_argument("--repo", metavar="REPO",
                        help="only builds that used a recorded revision of REPO (a configured name or path)")
    builds.set_defaults(handler=cmd_builds)

    import_ = client_command(
        "import", "record derivations built before the service ran",
        "Send each DRV to the service as the hook would (needs access to the hook socket) and wait "
        "until it is indexed. Outputs are recorded as built only when they are in the store; the "
        "build time recorded is the time of the import.",
    )
    import_.add_argument("drvs", nargs="+", metavar="DRV", help="a .drv store path")
    import_.add_argument("--hook-socket", metavar="PATH",
                         help="hook socket (default $BUILDREF_HOOK_SOCKET or /run/buildref/hook.sock)")
    import_.add_argument("--store-dir", help="Nix store directory (default $NIX_STORE_DIR or /nix/store)")
    import_.add_argument("--timeout", type=float, default=300.0,
                         help="seconds to wait for indexing (default 300)")
    import_.set_defaults(handler=cmd_import)

    record = client_command(
        "record", "record where a repository's refs point, and their source paths",
        "Ask the service to record REPO's refs (all of them and HEAD, or the REFs given): each move "
        "of a ref is kept with the time it was seen, and for each new revision the source store "
        "paths a build can take from it (the root and every directory, with and without "
        "export-ignore) are computed from git objects. REPO is a configured name or an absolute path.",
    )
    record.add_argument("repo", metavar="REPO")
    record.add_argument("refs", nargs="*", metavar="REF", help="ref names (main, v1, refs/tags/v1, HEAD)")
    record.set_defaults(handler=cmd_record)

    refs = client_command("refs", "the recorded history of a repository's refs",
                          "Every recorded move of every ref of REPO: when it was seen and the revision.")
    refs.add_argument("repo", metavar="REPO")
    refs.set_defaults(handler=cmd_refs)

    lookup = client_command(
        "lookup", "the builds that came from a ref",
        "Resolve REF (branch, tag, full or short rev) of REPO as recorded, now or --at a time, and list "
        "the builds that used its source: distance 0 uses it directly (input source, or a fixed-output "
        "derivation whose recursive hash is the tree's), then one step per derivation up the closure; "
        "newest first within a distance. When the revision has no build, the newest first-parent "
        "ancestor that has one is used (fallback).",
    )
    lookup.add_argument("repo", metavar="REPO")
    lookup.add_argument("ref", metavar="REF")
    lookup.add_argument("--at", metavar="T", help="where REF pointed at time T (epoch, ISO date, or age)")
    lookup.add_argument("--name", metavar="GLOB", help="only derivations whose name matches GLOB")
    lookup.add_argument("--direct", action="store_true", help="only derivations that use the source directly")
    lookup.set_defaults(handler=cmd_lookup)

    why = client_command(
        "why", "the revision a store path came from",
        "For an output of a recorded build: its derivation and the recorded revisions its closure "
        "used, with the refs that pointed at them when it was built and now. For a NAR hash (SRI, "
        "nix32 or hex): the repositories and revisions whose tree has it, and the builds that used it.",
    )
    why.add_argument("what", metavar="PATH|HASH")
    why.set_defaults(handler=cmd_why)
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
