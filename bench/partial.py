"""Attributing a filtered source (a subset of a revision's files) against a long history.

Usage: python bench/partial.py [--commits 20000] [--files 1500] [--kept 1000]

A repository of N commits over F files (made with `git fast-import`: each commit changes a few
files) is configured; real Nix 2.8 builds a derivation whose source keeps `--kept` of the files of
a commit a quarter of the way back (`builtins.path` with a filter: a subset, never a revision's
tree), through the hook. Then, on a fresh service: `why <output>` (the source's samples looked for
in every commit, candidates compared file by file) and `lookup REPO <that commit>` (the other
way), each checked to say `filtered` with the right counts; time, and the service's peak memory.
Reference, same run: `git log --all` walking the same history for one of the sampled paths (the
floor of any history search).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import buildref_argv, nix_env, run, start_service


def fast_import(repo: Path, commits: int, files: int) -> list[str]:
    """A history of ``commits`` commits on main, each changing 3 of ``files`` files; their ids."""
    run(["git", "init", "-q", "-b", "main", str(repo)])
    rng = random.Random(7)
    lines = []
    for c in range(1, commits + 1):
        changed = range(files) if c == 1 else rng.sample(range(files), 3)
        lines.append(f"commit refs/heads/main\nmark :{c}\ncommitter b <b@b> {1_500_000_000 + c * 60} +0000\n"
                     f"data <<EOF\nc{c}\nEOF\n")
        if c > 1:
            lines.append(f"from :{c - 1}\n")
        for f in changed:
            body = f"file {f} version {c} {rng.getrandbits(64):x}\n" * 4
            lines.append(f"M 100644 inline d{f % 40}/f{f}.txt\ndata {len(body)}\n{body}")
    stream = "".join(lines).encode()
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"], input=stream, check=True)
    run(["git", "-C", str(repo), "checkout", "-q", "main"])
    return run(["git", "-C", str(repo), "rev-list", "--reverse", "main"]).decode().split()


def peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=1500)
    parser.add_argument("--kept", type=int, default=1000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="brq", dir="/tmp"))
    try:
        repo = tmp / "hist"
        start = time.perf_counter()
        revs = fast_import(repo, args.commits, args.files)
        made = time.perf_counter() - start
        target = revs[len(revs) * 3 // 4]  # a quarter of the way back
        work = tmp / "at"
        run(["git", "-C", str(repo), "worktree", "add", "-q", "--detach", str(work), target])
        kept = sorted(p.relative_to(work).as_posix() for p in work.rglob("*.txt"))[:args.kept]
        (tmp / "kept.nix").write_text("[ " + " ".join(f'"{k}"' for k in kept) + " ]")
        expr = tmp / "filtered.nix"
        expr.write_text(f"""let kept = import ./kept.nix; root = toString {work};
          rel = p: builtins.substring (builtins.stringLength root + 1) 1000000 (toString p);
          src = builtins.path {{ name = "filtered"; path = {work};
            filter = p: t: t == "directory" || builtins.elem (rel p) kept; }}; in
          derivation {{ name = "uses-filtered-{time.time_ns()}"; system = builtins.currentSystem;
            builder = "/bin/sh"; args = [ "-c" "read x < ${{src}}/{kept[0]}; echo $x > $out" ]; }}""")
        svc = start_service(tmp / "svc", repository=[{"name": "hist", "path": str(repo)}])
        try:
            env = {**svc.nix_env(nix_env(tmp / "home")), "BUILDREF_SOCKET": str(svc.query_socket)}
            drv = run(["nix-instantiate", str(expr)], env).decode().strip()
            out = json.loads(run(["nix", "build", "--json", "--no-link", drv], env))[0]["outputs"]["out"]
            svc.wait_idle(timeout=600)
            svc.stop()
            svc.start()
            svc.wait_idle(timeout=600)
            assert svc.proc is not None
            base_kb = peak_kb(svc.proc.pid)
            start = time.perf_counter()
            why = json.loads(run(buildref_argv("why", out, "--json"), env))
            why_s = time.perf_counter() - start
            found = [(s["rev"], s["match"], s["files"]) for s in why["sources"]]
            want = (target, "filtered", {"agreeing": len(kept), "total": args.files})
            assert found[:1] == [want], (found, why)
            start = time.perf_counter()
            looked = json.loads(run(buildref_argv("lookup", "hist", target, "--json"), env))
            lookup_s = time.perf_counter() - start
            assert drv in {b["drvPath"] for b in looked["builds"]}, looked
            assert any(s["match"] == "filtered" for s in looked["sources"]), looked["sources"]
            peak = peak_kb(svc.proc.pid)
        finally:
            svc.stop()
        start = time.perf_counter()
        run(["git", "-C", str(repo), "log", "--all", "--format=%H", "--", kept[0]])
        git_log = time.perf_counter() - start
        back = len(revs) - revs.index(target) - 1
        print(f"history: {len(revs):,} commits over {args.files} files (made in {made:.0f} s); "
              f"a source keeping {len(kept)} files of a commit {back:,} commits back")
        print(f"  {'why <output> (filtered, found by samples)':<46} {why_s:6.2f} s   "
              f"git log --all -- <one path> {git_log:5.2f} s   ratio {why_s / git_log:5.2f}")
        print(f"  {'lookup hist <that commit>':<46} {lookup_s:6.2f} s")
        print(f"  {'service memory':<46} peak {peak / 1024:6.1f} MB (after start {base_kb / 1024:.1f} MB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
