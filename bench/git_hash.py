"""`buildref hash` vs `builtins.fetchGit` on a repository of >= 3,000 files.

Usage: python bench/git_hash.py [--files N] [--repeat R] [--attributes]
Cold: Nix starts with an empty fetcher cache and without the source in the store (it must run
`git archive`, unpack, hash and copy); buildref is a fresh process. Next commit: a commit that
changes one file; Nix's cache cannot help (new revision), buildref is again a fresh process, and
separately an already-running buildref (the service's case) that hashed the previous commit.
With --attributes the repository's .gitattributes makes git archive rewrite every file (eol=crlf,
ident in part of the tree, an export-subst version file): the rewriting path instead of the common
one. Every narHash is checked against Nix's. Prints median wall times and ratios (buildref / Nix;
below 1.0 is faster).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import buildref_argv, nix_env, report, run, timed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))

from buildref.git.source import GitRepository

ATTRIBUTES = b"*.c text eol=crlf\nsrc7/** ident\nVERSION export-subst\n"


def make_repo(path: Path, files: int, seed: int, attributes: bool = False) -> list[str]:
    rng = random.Random(seed)
    path.mkdir()
    if attributes:
        (path / ".gitattributes").write_bytes(ATTRIBUTES)
        (path / "VERSION").write_bytes(b"$Format:%H %cI$\n")
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.org",
               "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.org"}
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for i in range(files):
        directory = path / f"src{i % 60}" / f"mod{i % 7}"
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"file{i}.c"
        target.write_bytes(rng.randbytes(rng.randint(200, 8000)))
        if i % 50 == 0:
            target.chmod(0o755)
    subprocess.run(["git", "-C", str(path), "-c", "core.safecrlf=false", "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", "initial"], check=True, env=git_env)
    (path / "src3" / "mod3" / "file3.c").write_bytes(b"changed\n")
    subprocess.run(["git", "-C", str(path), "-c", "core.safecrlf=false", "commit", "-qam", "one file"],
                   check=True, env=git_env)
    return run(["git", "-C", str(path), "rev-parse", "HEAD~1", "HEAD"]).decode().split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--attributes", action="store_true", help="a repository git archive rewrites")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = nix_env(home)
        repo = home / "repo"
        first, second = make_repo(repo, args.files, 1, args.attributes)
        what = f"{args.files} files" + (", rewritten" if args.attributes else "")

        def fetch_argv(rev: str) -> list[str]:
            expr = f'(builtins.fetchGit {{ url = "{repo}"; rev = "{rev}"; }}).narHash'
            return ["nix", "eval", "--impure", "--raw", "--expr", expr]

        def cold_nix(rev: str) -> None:
            shutil.rmtree(home / "cache", ignore_errors=True)
            path = GitRepository(str(repo)).source(rev).store_path
            subprocess.run(["nix-store", "--delete", path], env=env, capture_output=True, check=False)

        for label, rev in (("cold", first), ("next commit (one file changed)", second)):
            nix_time, nix_hash = timed(fetch_argv(rev), env, before=lambda r=rev: cold_nix(r),
                                       repeat=args.repeat)
            ours_time, ours = timed(buildref_argv("hash", str(repo), "--rev", rev, "--json"), env,
                                    repeat=args.repeat)
            if nix_hash.decode() not in ours.decode():
                raise SystemExit(f"narHash differs from Nix for {rev}")
            report(f"hash, {label} ({what})", ours_time, nix_time, "fetchGit")

        warm = []
        for _ in range(args.repeat):
            source = GitRepository(str(repo))
            source.source(first)
            start = time.perf_counter()
            source.source(second)
            warm.append(time.perf_counter() - start)
        print(f"{'hash, next commit in a running process':<42} buildref "
              f"{statistics.median(warm) * 1000:8.1f} ms (memo by tree id)")


if __name__ == "__main__":
    main()
