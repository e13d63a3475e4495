"""buildref demo: build three revisions of a git repository with real Nix, then match builds and
commits in both directions using only what buildref computes offline (no Nix involved in the
matching): `buildref hash` for each revision's source path, `buildref drv show` for what each
build used, `buildref drv verify` to check the derivations.

Run through examples/demo.sh, which installs what it needs first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def sh(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stderr}")
    return proc.stdout.strip()


def buildref(*args: str) -> object:
    return json.loads(sh(sys.executable, "-m", "buildref", *args, "--json"))


BUILD = """{ rev }:
let src = builtins.fetchGit { url = "REPO"; inherit rev; };
in derivation {
  name = "greeting";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  # Builders get an empty PATH: shell builtins only.
  args = [ "-c" "while IFS= read -r line; do echo \\"$line\\"; done < $src/hello.txt > $out" ];
  inherit src;
}
"""


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="buildref-demo-"))
    repo = work / "app"
    repo.mkdir()
    env = {**os.environ, "HOME": str(work), "XDG_CACHE_HOME": str(work / "cache"),
           "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@example.org",
           "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@example.org"}
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    revs = []
    for i, text in enumerate(["hello", "hello, world", "hello again"]):
        (repo / "hello.txt").write_text(text + "\n")
        (repo / ".gitattributes").write_text("notes.txt export-ignore\n")
        (repo / "notes.txt").write_text(f"not shipped {i}\n")
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-qm", f"version {i}", cwd=repo, env=env)
        revs.append(sh("git", "rev-parse", "HEAD", cwd=repo))
    (work / "build.nix").write_text(BUILD.replace("REPO", str(repo)))
    print(f"repository {repo}: {len(revs)} commits\n")

    print("1. Real Nix builds each revision (builtins.fetchGit + a derivation):")
    builds = {}
    for rev in revs:
        out = sh("nix-build", str(work / "build.nix"), "--argstr", "rev", rev, "--no-out-link",
                 "--quiet", env=env)
        drv = sh("nix-store", "--query", "--deriver", out, env=env)
        builds[out] = drv
        print(f"   {rev[:12]}  ->  {out}")

    print("\n2. buildref drv verify recomputes every output path and .drv path from the files:")
    results = buildref("drv", "verify", "-r", *builds.values())
    assert isinstance(results, list)
    print(f"   {sum(r['ok'] for r in results)} of {len(results)} derivations match what Nix wrote")

    print("\n3. buildref hash: each revision's source as Nix stores it (no checkout, no Nix):")
    source_of = {}
    for rev in revs:
        info = buildref("hash", str(repo), "--rev", rev)
        assert isinstance(info, dict)
        source_of[info["storePath"]] = rev
        print(f"   {rev[:12]}  {info['narHash']}  {info['storePath']}")

    print("\n4. Lookups, answered by joining the two (what the buildref service will do on every build):")
    commit_of = {}
    for out, drv in builds.items():
        shown = buildref("drv", "show", drv)
        assert isinstance(shown, dict)
        commits = [source_of[s] for s in shown[drv]["inputSrcs"] if s in source_of]
        commit_of[out] = commits[0] if commits else None
        print(f"   {out} came from commit {commit_of[out] or '(unknown)'}")
    tip = sh("git", "rev-parse", "main", cwd=repo)
    built = [out for out, commit in commit_of.items() if commit == tip]
    print(f"   main ({tip[:12]}) was built as {built[0] if built else '(not built)'}")
    print(f"\nfiles kept in {work}")


if __name__ == "__main__":
    main()
