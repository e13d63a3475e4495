"""Matching by content on real long histories, against references measured in the same run.

Usage: python bench/matching.py --nixpkgs-lib PATH --nix PATH [--tags 60] [--round-one REV]

PATH: clones (bare is fine) of the public repositories nix-community/nixpkgs.lib (22,235 commits)
and NixOS/nix.

1. nixpkgs.lib as a configured repository. Real Nix 2.8 builds a derivation from
   `builtins.fetchGit` of a commit from 2021 that was never a ref's tip, through the hook. Then,
   on a fresh service (the first `why` walks the whole history): `why <output>` and
   `lookup nlib <sha>` through the CLI, checked to name that commit. Goal: <= 3 s each. Reference:
   real Nix's `builtins.fetchGit` of the same commit (what a script would run per candidate).
2. NixOS/nix: `buildref record` of its newest N release tags. Bytes the index grew per recorded
   revision (database and WAL), and the time; the same with round one's code (REV) as the
   reference. Goal: <= 50 KB per revision.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import buildref_argv, nix_env, run, start_service

ROOT = Path(__file__).resolve().parent.parent


def git(repo: Path, *args: str) -> str:
    return run(["git", "-C", str(repo), *args]).decode().strip()


def timed_cli(env: dict[str, str], *args: str) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    out = run(buildref_argv(*args, "--json"), env)
    return time.perf_counter() - start, json.loads(out)


def bench_nixpkgs_lib(tmp: Path, source: Path) -> None:
    repo = tmp / "nixpkgs.lib.git"
    run(["git", "clone", "-q", "--bare", str(source), str(repo)])
    rev = git(repo, "rev-list", "--before=2021-06-01", "-1", "HEAD")
    tips = set(git(repo, "for-each-ref", "--format=%(objectname)").split())
    assert rev not in tips, "the commit must never have been a tip"
    commits = int(git(repo, "rev-list", "--count", "--all"))
    env = nix_env(tmp / "home")
    expr = tmp / "old.nix"
    expr.write_text(f"""let src = builtins.fetchGit {{ url = "{repo}"; rev = "{rev}"; }}; in
      derivation {{ name = "uses-old-lib"; system = builtins.currentSystem; builder = "/bin/sh";
        args = [ "-c" "read x < ${{src}}/lib/default.nix; echo $x {time.time()} > $out" ]; }}""")
    start = time.perf_counter()
    fetch = f'(builtins.fetchGit {{ url = "{repo}"; rev = "{rev}"; }}).narHash'
    run(["nix", "eval", "--impure", "--raw", "--expr", fetch], env)
    fetch_git = time.perf_counter() - start

    base = tmp / "svc"
    svc = start_service(base, repository=[{"name": "nlib", "path": str(repo)}])
    try:
        env = {**svc.nix_env(env), "BUILDREF_SOCKET": str(svc.query_socket)}
        drv = run(["nix-instantiate", str(expr)], env).decode().strip()
        out = json.loads(run(["nix", "build", "--json", "--no-link", drv], env))[0]["outputs"]["out"]
        svc.wait_idle(timeout=600)
        svc.stop()
        svc.start()  # fresh memory: the first why walks the history
        svc.wait_idle(timeout=600)
        why_s, why = timed_cli(env, "why", out)
        names = {(s["repository"], s["rev"]) for s in why["sources"]}  # type: ignore[union-attr]
        assert ("nlib", rev) in names, why
        lookup_s, found = timed_cli(env, "lookup", "nlib", rev[:12])
        assert found["rev"] == rev, found
        assert any(b["drvPath"] == drv for b in found["builds"]), found  # type: ignore[union-attr]
        again_s, _ = timed_cli(env, "why", out)
    finally:
        svc.stop()
    print(f"nixpkgs.lib, {commits:,} commits; a build from a 2021 commit that was never a tip ({rev[:12]}):")
    print(f"  {'why <output>, first (walks the history)':<46} {why_s:6.2f} s   (goal <= 3 s)")
    print(f"  {'why <output>, again':<46} {again_s:6.2f} s")
    print(f"  {'lookup nlib <short sha>':<46} {lookup_s:6.2f} s   (goal <= 3 s)")
    print(f"  {'reference: nix eval builtins.fetchGit (once)':<46} {fetch_git:6.2f} s   "
          f"ratio why/fetchGit {why_s / fetch_git:5.2f}")


def _release_tags(repo: Path, count: int) -> list[str]:
    tags = [t for t in git(repo, "tag").split() if re.fullmatch(r"\d+\.\d+(\.\d+)?", t)]
    tags.sort(key=lambda t: [int(x) for x in t.split(".")])
    return tags[-count:]


def _db_bytes(state: Path) -> int:
    return sum(os.stat(state / f).st_size for f in ("buildref.db", "buildref.db-wal") if (state / f).exists())


def _record_tags(base: Path, repo: Path, tags: list[str], pythonpath: str | None
                 ) -> tuple[float, int, int, int]:
    """(seconds, bytes grown while serving, bytes grown after stop, WAL bytes at the end) of one
    `record` of ``tags``, with the code at ``pythonpath`` (None: this checkout)."""
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    svc = start_service(base)
    try:
        # round one named the parameter `repository`; this version `repo`
        before = _db_bytes(base / "state")
        argv = [sys.executable, "-m", "buildref", "record", str(repo), *tags,
                "--socket", str(svc.query_socket)]
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        serving = _db_bytes(base / "state") - before
        wal_file = base / "state" / "buildref.db-wal"
        wal = wal_file.stat().st_size if wal_file.exists() else 0
    finally:
        svc.stop()
    return seconds, serving, _db_bytes(base / "state") - before, wal


def bench_nix_tags(tmp: Path, source: Path, count: int, round_one: str) -> None:
    repo = tmp / "nix.git"
    run(["git", "clone", "-q", "--bare", str(source), str(repo)])
    tags = _release_tags(repo, count)
    ours = _record_tags(tmp / "ours", repo, tags, None)
    old_tree = tmp / "round-one"
    run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old_tree), round_one])
    try:
        # round one's service, from its own tree, with this run's interpreter and packages
        os.environ["PYTHONPATH"] = str(old_tree / "service")
        try:
            theirs = _record_tags(tmp / "theirs", repo, tags, str(old_tree / "service"))
        finally:
            del os.environ["PYTHONPATH"]
    finally:
        run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)])
    n = len(tags)
    print(f"NixOS/nix, {n} release tags ({tags[0]} .. {tags[-1]}) recorded at once:")
    for label, (seconds, serving, after, wal) in (("this version", ours), (f"round one ({round_one[:7]})",
                                                                              theirs)):
        print(f"  {label:<22} {after / n / 1024:8.1f} KB per revision (after stop; "
              f"{serving / n / 1024:.1f} KB while serving, WAL {wal / 1024:.0f} KB)   {seconds:6.1f} s")
    print(f"  ratio bytes per revision this/round one {ours[2] / theirs[2]:5.3f}"
          "   (goal <= 50 KB per revision)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nixpkgs-lib", type=Path, required=True,
                        help="a clone of nix-community/nixpkgs.lib")
    parser.add_argument("--nix", type=Path, required=True, help="a clone of NixOS/nix")
    parser.add_argument("--tags", type=int, default=60)
    parser.add_argument("--round-one", default="e4b2a81", help="the revision of round one's code")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="brm", dir="/tmp"))
    try:
        bench_nixpkgs_lib(tmp, args.nixpkgs_lib)
        bench_nix_tags(tmp, args.nix, args.tags, args.round_one)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
