"""buildref demo: start `buildref serve` on a temporary state directory, build three revisions of a
git repository with real Nix — whose post-build-hook is buildref's hook, so every build is recorded
by the service — then tag two of them, `buildref record` the repository, and ask both questions:
`buildref lookup REPO REF` (which build came from this ref?) and `buildref why PATH` (which commit
did this store path come from?).

Run through examples/demo.sh, which installs what it needs first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stderr}")
    return proc.stdout.strip()


def buildref(*args: str) -> object:
    return json.loads(sh(sys.executable, "-m", "buildref", *args, "--json"))


def start_service(work: Path) -> subprocess.Popen[bytes]:
    """`buildref serve` with its state, sockets and log under ``work``; clients find it through
    BUILDREF_SOCKET, the hook through BUILDREF_HOOK_SOCKET and BUILDREF_SPOOL_DIR."""
    config = work / "buildref.toml"
    config.write_text(f'state_dir = "{work}/state"\n[hook]\nsocket = "{work}/hook.sock"\n'
                      f'[query]\nsocket = "{work}/query.sock"\n')
    os.environ.update(BUILDREF_SOCKET=f"{work}/query.sock", BUILDREF_HOOK_SOCKET=f"{work}/hook.sock",
                      BUILDREF_SPOOL_DIR=f"{work}/state/spool")
    with (work / "serve.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "buildref", "serve", "--config", str(config)],
                                stdout=log, stderr=log)
    for _ in range(200):
        if subprocess.run([sys.executable, "-m", "buildref", "status"], capture_output=True,
                          check=False).returncode == 0:
            return proc
        time.sleep(0.05)
    sys.exit(f"buildref serve did not start; see {work / 'serve.log'}")


BUILD = """{ rev, run }:
let src = builtins.fetchGit { url = "REPO"; inherit rev; };
in derivation {
  name = "greeting";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  # Builders get an empty PATH: shell builtins only.
  args = [ "-c" "while IFS= read -r line; do echo \\"$line\\"; done < $src/hello.txt > $out" ];
  inherit src;
  inherit run;  # a fresh derivation each demo run, so Nix really builds (and runs the hook)
}
"""


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="brdemo-", dir="/tmp"))  # short: socket paths are limited
    service = start_service(work)
    try:
        run(work)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
    print(f"\nfiles kept in {work} (service log: {work / 'serve.log'})")


def run(work: Path) -> None:
    repo = work / "app"
    repo.mkdir()
    hook = f"post-build-hook = {ROOT / 'hook' / 'buildref-hook'}"
    nix_config = os.environ.get("NIX_CONFIG", "") + "\n" + hook
    env = {**os.environ, "NIX_CONFIG": nix_config, "HOME": str(work), "XDG_CACHE_HOME": str(work / "cache"),
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

    print("1. Real Nix builds each revision (builtins.fetchGit + a derivation); its post-build-hook")
    print("   hands each build to buildref serve:")
    for rev in revs:
        out = sh("nix-build", str(work / "build.nix"), "--argstr", "rev", rev, "--argstr", "run", work.name,
                 "--no-out-link", "--quiet", env=env)
        print(f"   {rev[:12]}  ->  {out}")
    for _ in range(200):
        status = buildref("status")
        assert isinstance(status, dict)
        if status["queueDepth"] == 0:
            break
        time.sleep(0.05)
    events = status["events"]
    print(f"\n   buildref status: {events['received']} events received, {events['indexed']} indexed, "
          f"{events['failed']} failed; {status['database']['derivations']} derivations in the index")
    recorded = buildref("builds")
    assert isinstance(recorded, list)
    builds = {b["outputs"]["out"]: b["drvPath"] for b in recorded if "out" in b["outputs"]}
    print("   buildref builds:")
    for b in recorded:
        print(f"   {b['drvPath']}  out={b['outputs'].get('out')}")

    print("\n2. buildref drv verify recomputes every output path and .drv path from the files:")
    results = buildref("drv", "verify", "-r", *builds.values())
    assert isinstance(results, list)
    print(f"   {sum(r['ok'] for r in results)} of {len(results)} derivations match what Nix wrote")

    print("\n3. buildref hash: each revision's source as Nix stores it (no checkout, no Nix):")
    for rev in revs:
        info = buildref("hash", str(repo), "--rev", rev)
        assert isinstance(info, dict)
        print(f"   {rev[:12]}  {info['narHash']}  {info['storePath']}")

    print("\n4. buildref record: the repository's refs, and each revision's source paths:")
    for tag, rev in (("v1", revs[0]), ("v2", revs[1])):
        sh("git", "tag", tag, rev, cwd=repo)
    recorded = buildref("record", str(repo))
    assert isinstance(recorded, dict)
    for ref, rev in recorded["refs"].items():
        print(f"   {rev[:12]}  {ref}")

    print("\n5. buildref lookup REPO REF -> the build that came from it:")
    for ref in ("v1", "v2", "main"):
        found = buildref("lookup", str(repo), ref)
        assert isinstance(found, dict)
        outs = [b["outputs"].get("out") for b in found["builds"]]
        print(f"   {ref:<5} {found['rev'][:12]}  ->  {outs[0] if outs else '(no build)'}")

    print("\n6. buildref why PATH -> the commit (and refs) it came from:")
    for out in builds:
        why = buildref("why", out)
        assert isinstance(why, dict)
        for source in why["sources"]:
            refs = ", ".join(source["refs"]) or "no ref"
            print(f"   {out}  <-  {source['rev'][:12]} ({refs})")

if __name__ == "__main__":
    main()
