"""buildref demo: start `buildref serve` on a temporary state directory, make the flake in
examples/demo-flake a git repository with tags v1 and v2, build both with real Nix — whose
post-build-hook is buildref's hook, so the service records each build — then `buildref record` the
repository and ask both questions: `buildref lookup REPO REF` (which build came from this ref?) and
`buildref why PATH` (which commit did this store path come from?).

Run through examples/demo.sh, which installs what it needs first.
"""

from __future__ import annotations

import json
import os
import shutil
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
    hook = f"post-build-hook = {ROOT / 'hook' / 'buildref-hook'}"
    nix_config = os.environ.get("NIX_CONFIG", "") + "\n" + hook
    env = {**os.environ, "NIX_CONFIG": nix_config, "HOME": str(work), "XDG_CACHE_HOME": str(work / "cache"),
           "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@example.org",
           "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@example.org"}
    system = sh("nix", "eval", "--raw", "--impure", "--expr", "builtins.currentSystem", env=env)

    # The flake in examples/demo-flake, made a repository: v1, v2, and main one commit ahead.
    shutil.copytree(ROOT / "examples" / "demo-flake", repo)
    flake = repo / "flake.nix"
    flake.write_text(flake.read_text().replace("@system@", system))
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    revs = {}
    for tag, text in (("v1", "hello"), ("v2", "hello, world"), (None, "hello again")):
        # the run's name makes each demo's sources new, so Nix really builds (and runs the hook)
        (repo / "hello.txt").write_text(f"{text} ({work.name})\n")
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-qm", text, cwd=repo, env=env)
        if tag:
            sh("git", "tag", tag, cwd=repo)
            revs[tag] = sh("git", "rev-parse", "HEAD", cwd=repo)
    print(f"flake repository {repo}: tags v1, v2; main one commit ahead of v2\n")

    print("1. Real Nix builds v1 and v2 (nix build git+file://...); its post-build-hook hands each")
    print("   build to buildref serve:")
    builds = {}
    for tag, rev in revs.items():
        built = json.loads(sh("nix", "build", "--json", "--no-link", f"git+file://{repo}?ref=main&rev={rev}",
                              env=env))
        builds[built[0]["outputs"]["out"]] = tag
        print(f"   {tag} {rev[:12]}  ->  {built[0]['outputs']['out']}")
    for _ in range(200):
        status = buildref("status")
        assert isinstance(status, dict)
        if status["queueDepth"] == 0:
            break
        time.sleep(0.05)
    events = status["events"]
    print(f"   buildref status: {events['received']} builds received, {events['indexed']} indexed, "
          f"{events['failed']} failed")

    print("\n2. buildref record: the repository's refs, and each revision's source paths (from git objects):")
    recorded = buildref("record", str(repo))
    assert isinstance(recorded, dict)
    for ref, rev in recorded["refs"].items():
        print(f"   {rev[:12]}  {ref}")

    print("\n3. buildref lookup REPO REF -> the build that came from it:")
    for ref in ("v1", "v2", "main"):
        found = buildref("lookup", str(repo), ref)
        assert isinstance(found, dict)
        outs = [b["outputs"].get("out") for b in found["builds"]]
        note = ""
        if found["fallback"]:
            note = f"  (not built; newest built ancestor, {found['fallback']['commitsBehind']} commit behind)"
        print(f"   {ref:<5} {found['rev'][:12]}  ->  {outs[0] if outs else '(no build)'}{note}")

    print("\n4. buildref why PATH -> the commit (and refs) it came from:")
    for out in builds:
        why = buildref("why", out)
        assert isinstance(why, dict)
        for source in why["sources"]:
            refs = ", ".join(source["refs"]) or "no ref"
            print(f"   {out}  <-  {source['rev'][:12]} ({refs})")

if __name__ == "__main__":
    main()
