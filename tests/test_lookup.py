"""`buildref lookup` and `buildref why`, end to end: real flake builds through the hook, refs
recorded before and after the builds, a fixed-output derivation matched by hash, and the fallback
to an ancestor when a ref's tip has no build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from buildsets import flake_repo, salt
from helpers import Nix, assert_error_line, git
from servicectl import ServiceProcess, nix_build_json, wait_for


@pytest.fixture
def service(tmp_path: Path, system: str) -> Iterator[ServiceProcess]:
    repo = flake_repo(tmp_path, system)
    svc = ServiceProcess(repository=[{"name": "app", "path": str(repo)}])
    try:
        yield svc.start()
    finally:
        svc.close()


def run(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "buildref", *args, "--socket", str(service.query_socket)],
                          capture_output=True, check=False)


def cli_json(service: ServiceProcess, *args: str) -> dict[str, Any]:
    proc = run(service, *args, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def commit(repo: Path, text: str) -> str:
    (repo / "data").write_text(text)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", text)
    return git(repo, "rev-parse", "HEAD")


def test_lookup_and_why_both_ways(nix: Nix, service: ServiceProcess, tmp_path: Path, system: str) -> None:
    repo = tmp_path / "flake"
    env = service.nix_env(nix.env)
    v1 = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    v2 = commit(repo, f"second {salt()}\n")
    git(repo, "tag", "v2")

    # v2 is built before any ref is recorded: the join finds it anyway
    built_v2 = nix_build_json(env, f"git+file://{repo}?rev={v2}")
    service.wait_idle()
    cli_json(service, "record", "app")
    built_v1 = nix_build_json(env, f"git+file://{repo}?rev={v1}")
    service.wait_idle()

    for ref, built, rev in (("v1", built_v1, v1), ("v2", built_v2, v2), ("main", built_v2, v2)):
        result = cli_json(service, "lookup", "app", ref)
        assert result["rev"] == rev and result["fallback"] is None
        builds = result["builds"]
        assert isinstance(builds, list) and builds
        assert builds[0]["outputs"] == built[0]["outputs"] and builds[0]["distance"] == 0
        assert builds[0]["valid"] is True
        sources = result["sources"]
        assert isinstance(sources, list) and any(s["subdir"] is None for s in sources)
    assert cli_json(service, "lookup", "app", v1[:10])["rev"] == v1  # a short rev

    out_v1 = built_v1[0]["outputs"]["out"]
    why = cli_json(service, "why", out_v1)
    assert why["drvPath"] == built_v1[0]["drvPath"] and why["output"] == "out"
    sources = why["sources"]
    assert isinstance(sources, list)
    assert {(s["repository"], s["rev"], s["subdir"]) for s in sources} == {("app", v1, None)}
    assert sources[0]["refs"] == ["refs/tags/v1"]

    # by NAR hash, in any form: the revisions with that tree and the builds that used it
    hash_argv = [sys.executable, "-m", "buildref", "hash", str(repo), "--rev", v1, "--json"]
    info = json.loads(subprocess.run(hash_argv, capture_output=True, check=True).stdout)
    nix32 = nix.run("nix", "hash", "to-base32", info["narHash"]).decode().strip()
    for form in (info["narHash"], nix32):
        by_hash = cli_json(service, "why", form)
        assert [s["rev"] for s in by_hash["sources"]] == [v1]
        assert [b["drvPath"] for b in by_hash["builds"]] == [built_v1[0]["drvPath"]]

    # a fixed-output derivation whose declared hash is v1's tree matches v1 without fetching
    fod = tmp_path / "fod.nix"
    fod.write_text(f"""derivation {{ name = "fetched-app"; system = "{system}"; builder = "/bin/sh";
      outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = "{info['narHash']}"; }}""")
    fod_drv = nix.instantiate(fod)[0]
    imported = run(service, "import", fod_drv, "--hook-socket", str(service.hook_socket))
    assert imported.returncode == 0, imported.stderr.decode()
    matched = cli_json(service, "lookup", "app", "v1", "--name", "fetched-*")
    assert [b["drvPath"] for b in matched["builds"]] == [fod_drv]
    assert matched["builds"][0]["valid"] is False  # never built: not in the store

    # every build from the repository, newest first
    from_repo = run(service, "builds", "--repo", "app", "--json")
    assert [b["drvPath"] for b in json.loads(from_repo.stdout)] == [
        fod_drv, built_v1[0]["drvPath"], built_v2[0]["drvPath"]]

    # main moves on without a build: the newest built first-parent ancestor answers
    commit(repo, f"third {salt()}\n")
    cli_json(service, "record", "app")
    result = cli_json(service, "lookup", "app", "main")
    assert result["fallback"] == {"rev": v2, "commitsBehind": 1}
    assert result["builds"][0]["outputs"] == built_v2[0]["outputs"]


def test_lookup_errors(service: ServiceProcess, tmp_path: Path) -> None:
    # a repository nobody recorded (the configured one is recorded by the watcher at start)
    assert_error_line(run(service, "lookup", str(tmp_path), "v1"), "has not been recorded")
    assert cli_json(service, "record", "app")["repository"] == "app"
    assert_error_line(run(service, "lookup", "app", "nope"), "no revision 'nope' in repository 'app'")
    unknown = "/nix/store/" + "a" * 32 + "-x"
    assert_error_line(run(service, "why", unknown), "not an output of a recorded build")
    assert_error_line(run(service, "why", "not-a-hash"), "neither a store path")


def test_pinned_inputs_are_matched_through_flake_locks(nix: Nix, tmp_path: Path, system: str) -> None:
    """A build that uses a revision pinned in a flake.lock — a configured file, or the flake.lock
    of a watched repository's tip — is matched to it without that revision's repository."""
    dep = tmp_path / "dep"
    subprocess.run(["git", "init", "-q", "-b", "main", str(dep)], check=True)
    (dep / "lib.txt").write_text(f"library {salt()}\n")
    git(dep, "add", "-A")
    git(dep, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lib")
    rev = git(dep, "rev-parse", "HEAD")
    info = json.loads(subprocess.run([sys.executable, "-m", "buildref", "hash", str(dep), "--json"],
                                     capture_output=True, check=True).stdout)
    lock = {"version": 7, "root": "root", "nodes": {
        "root": {"inputs": {"dep": "dep"}},
        "dep": {"locked": {"type": "git", "url": f"file://{dep}", "rev": rev, "narHash": info["narHash"],
                           "lastModified": info["lastModified"], "revCount": info["revCount"]},
                "original": {"type": "git", "url": f"file://{dep}"}},
    }}
    infra = tmp_path / "infra"
    infra.mkdir()
    (infra / "flake.lock").write_text(json.dumps(lock))
    app = flake_repo(tmp_path, system)
    (app / "flake.lock").write_text(json.dumps(lock))
    git(app, "add", "flake.lock")
    git(app, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock")
    app_rev = git(app, "rev-parse", "HEAD")

    svc = ServiceProcess(flake_locks=[str(infra / "flake.lock")],
                         repository=[{"name": "app", "path": str(app)}])
    try:
        svc.start()
        user = tmp_path / "user.nix"
        user.write_text(f"""let src = builtins.fetchGit {{ url = "{dep}"; rev = "{rev}"; }}; in
          derivation {{ name = "uses-dep"; system = "{system}"; builder = "/bin/sh";
            args = [ "-c" "read x < ${{src}}/lib.txt; echo $x > $out" ]; }}""")
        built = nix_build_json(svc.nix_env(nix.env), "-f", str(user))
        svc.wait_idle()
        wait_for(lambda: any(line.get("event") == "flake.lock recorded" for line in svc.log_lines()),
                 what="the configured flake.lock")
        why = cli_json(svc, "why", built[0]["outputs"]["out"])
        assert why["sources"] == []  # the dep repository itself was never recorded
        found = {(x["lockFile"], x["input"], x["rev"], x["repository"]) for x in why["lockedInputs"]}
        assert found == {(str(infra / "flake.lock"), "dep", rev, f"file://{dep}"),
                         (f"app@{app_rev}:flake.lock", "dep", rev, f"file://{dep}")}
    finally:
        svc.close()


def test_subdirectory_fetchgit_at_and_odd_names(nix: Nix, tmp_path: Path, system: str) -> None:
    """A derivation that uses only ./sub of the flake, one that uses builtins.fetchGit of the
    repository, `lookup --at`, and a repository name no shell or SQL string should survive."""
    repo = tmp_path / "odd repo"
    (repo / "sub").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "sub" / "part.txt").write_text(f"part {salt()}\n")
    (repo / "flake.nix").write_text(f"""{{
  outputs = {{ self }}: {{
    packages.{system}.sub = derivation {{
      name = "only-sub"; system = "{system}"; builder = "/bin/sh";
      args = [ "-c" "read x < ${{./sub}}/part.txt; echo $x > $out" ];
    }};
  }};
}}
""")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    v1 = git(repo, "rev-parse", "HEAD")
    name = "it's; app '-- \"x\" \u00e9"
    svc = ServiceProcess(repository=[{"name": name, "path": str(repo)}])
    try:
        svc.start()
        env = svc.nix_env(nix.env)
        url = "file://" + quote(str(repo))
        sub_build = nix_build_json(env, f"git+{url}?ref=main&rev={v1}#sub")
        fetch = tmp_path / "fetch.nix"
        fetch.write_text(f"""let src = builtins.fetchGit {{ url = "{url}"; ref = "main"; rev = "{v1}"; }}; in
          derivation {{ name = "fetched"; system = "{system}"; builder = "/bin/sh";
            args = [ "-c" "read x < ${{src}}/sub/part.txt; echo $x > $out" ]; }}""")
        fetch_build = nix_build_json(env, "-f", str(fetch))
        svc.wait_idle()
        # `refs` is an error until the watcher's first pass has recorded the repository
        wait_for(lambda: run(svc, "refs", name).returncode == 0, what="the refs recorded at start")
        before_move = time.time()
        result = cli_json(svc, "lookup", name, "main")
        assert result["repository"] == name and result["rev"] == v1
        by_drv = {b["drvPath"]: b for b in result["builds"]}
        assert by_drv[sub_build[0]["drvPath"]]["outputs"] == sub_build[0]["outputs"]
        assert by_drv[fetch_build[0]["drvPath"]]["outputs"] == fetch_build[0]["outputs"]
        assert all(b["distance"] == 0 for b in result["builds"])
        why = cli_json(svc, "why", sub_build[0]["outputs"]["out"])
        assert [(s["repository"], s["rev"], s["subdir"]) for s in why["sources"]] == [(name, v1, "sub")]

        (repo / "README").write_text("two\n")
        git(repo, "add", "-A")
        git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "two")
        v2 = git(repo, "rev-parse", "HEAD")
        wait_for(lambda: cli_json(svc, "lookup", name, "main")["rev"] == v2, what="main to move")
        assert cli_json(svc, "lookup", name, "main", "--at", str(before_move))["rev"] == v1
    finally:
        svc.close()


def test_deploy_script_uses_the_cached_build_and_builds_only_when_needed(
        nix: Nix, service: ServiceProcess, tmp_path: Path) -> None:
    repo = tmp_path / "flake"
    v1 = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    v2 = commit(repo, f"second {salt()}\n")
    git(repo, "tag", "v2")
    env = service.nix_env(nix.env)
    built_v1 = nix_build_json(env, f"git+file://{repo}?rev={v1}")
    service.wait_idle()
    assert cli_json(service, "record", "app")["refs"]["refs/tags/v2"] == v2
    script = Path(__file__).resolve().parent.parent / "examples" / "deploy.sh"
    env = {**env, "BUILDREF_SOCKET": str(service.query_socket),
           "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    attr = f"packages.{nix.eval_json('builtins.currentSystem')}.default"
    target = tmp_path / "current"

    flake = f"git+file://{repo}"
    cached = subprocess.run([str(script), "app", "v1", flake, attr, str(target)], env=env,
                            capture_output=True, check=False)
    assert cached.returncode == 0, cached.stderr.decode()
    assert "already in this machine's store" in cached.stderr.decode()
    assert cached.stdout.decode().strip() == built_v1[0]["outputs"]["out"] == os.readlink(target)

    fresh = subprocess.run([str(script), "app", "v2", flake, attr, str(target)], env=env, capture_output=True,
                           check=False)
    assert fresh.returncode == 0, fresh.stderr.decode()
    assert "no cached build of v2" in fresh.stderr.decode()
    out = fresh.stdout.decode().strip()
    assert os.readlink(target) == out
    service.wait_idle()  # the build went through the hook: now lookup knows it
    assert cli_json(service, "lookup", "app", "v2")["builds"][0]["outputs"]["out"] == out
    assert cli_json(service, "lookup", "app", "v2")["rev"] == v2


def test_a_users_copy_never_outranks_the_configured_repository(nix: Nix, service: ServiceProcess,
                                                               tmp_path: Path) -> None:
    """Issue 12, item 5: a user copies a build's source into a repository of theirs, tags it
    ``v9.9-official`` and records it. Round one listed it first. Answers say who recorded each
    repository, and configured ones rank first."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    repo = tmp_path / "flake"
    v1 = git(repo, "rev-parse", "HEAD")
    built = nix_build_json(service.nix_env(nix.env), f"git+file://{repo}?rev={v1}")
    service.wait_idle()
    cli_json(service, "record", "app")
    # the copy: the same files in a new commit of the user's own repository
    copy = service.base / "forgery"
    subprocess.run(["git", "init", "-q", "-b", "main", str(copy)], check=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", v1], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
    git(copy, "add", "-A")
    git(copy, "-c", "user.name=mallory", "-c", "user.email=m@m", "commit", "-qm", "official release")
    git(copy, "tag", "v9.9-official")
    forged = git(copy, "rev-parse", "HEAD")
    for root, dirs, files in os.walk(copy):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.lchown(name, nobody.pw_uid, nobody.pw_gid)
    as_nobody = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                 sys.executable, "-m", "buildref", "--socket", str(service.query_socket)]
    recorded = subprocess.run([*as_nobody, "record", str(copy)], capture_output=True, check=False, cwd="/")
    assert recorded.returncode == 0, recorded.stderr.decode()

    why = cli_json(service, "why", built[0]["outputs"]["out"])
    sources = [(s["repository"], s["rev"], s["recordedBy"]) for s in why["sources"]]
    assert sources[0] == ("app", v1, "config")
    assert (str(copy), forged, nobody.pw_uid) in sources[1:]
    text = run(service, "why", built[0]["outputs"]["out"])
    assert f"recorded by uid {nobody.pw_uid}" in text.stdout.decode()
