"""The commands that need no service: ``hash`` (a revision or a path as Nix would put it in the
store) and ``drv show`` / ``drv verify`` (derivations read straight from the store directory)."""

from __future__ import annotations

import argparse
import sys

from buildref.cli.common import print_json
from buildref.errors import BuildrefError
from buildref.models import Mismatch, PathHash, RevisionHash, Verified, Wire


def _print_result(args: argparse.Namespace, result: Wire) -> None:
    """One JSON object with --json, else one ``key<TAB>value`` line per field."""
    if args.json:
        print_json(result)
    else:
        for key, value in result.to_json().items():
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
    _print_result(args, RevisionHash(rev=info.rev, nar_hash=info.nar_hash.sri, store_path=info.store_path,
                                     last_modified=info.last_modified, rev_count=info.rev_count,
                                     nar_size=info.nar_size, rule=info.rule.value))
    return 0


def _hash_path(args: argparse.Namespace, store_dir: str) -> int:
    import os

    from buildref.nix.nar import hash_path
    from buildref.nix.storepath import check_name, source_path

    if args.repo is not None or args.subdir is not None or args.rev != "HEAD":
        raise BuildrefError("--path hashes a file or directory; it takes no repository, --rev or --subdir")
    name = check_name(args.name or os.path.basename(os.path.normpath(args.path)))
    info = hash_path(args.path)
    _print_result(args, PathHash(nar_hash=info.nar_hash.sri,
                                 store_path=source_path(info.nar_hash, name, store_dir=store_dir),
                                 nar_size=info.nar_size))
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
    results: list[Verified] = []
    for path in paths:
        data, drv = reader.read(path)
        mismatches = verify(path, data, drv, hasher)
        results.append(Verified(path, not mismatches,
                                tuple(Mismatch(m.what, m.recorded, m.computed) for m in mismatches)))
        if not args.json:
            for m in mismatches:
                print(f"mismatch: {m}")
    failed = sum(not r.ok for r in results)
    if args.json:
        print_json(results)
    print(f"{len(paths) - failed} of {len(paths)} derivations verified", file=sys.stderr)
    return 1 if failed else 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                 parent: argparse.ArgumentParser) -> None:
    store_dir_help = "Nix store directory (default $NIX_STORE_DIR or /nix/store)"
    hash_ = commands.add_parser(
        "hash", parents=[parent],
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
    hash_.add_argument("--store-dir", help=store_dir_help)
    hash_.set_defaults(handler=cmd_hash)

    drv = commands.add_parser("drv", help="read and check .drv files").add_subparsers(
        dest="drv_command", required=True, metavar="SUBCOMMAND")
    show = drv.add_parser(
        "show", parents=[parent], help="print derivations as `nix show-derivation` does",
        description="Print the JSON `nix show-derivation` prints (Nix 2.8 shape), keyed by drv path.",
    )
    verify = drv.add_parser(
        "verify", parents=[parent], help="recompute output paths and drv paths; exit 1 on any mismatch",
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
        sub.add_argument("--store-dir", help=store_dir_help)
        sub.set_defaults(handler=handler)
