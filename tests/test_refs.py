"""`buildref record` and `buildref refs`: ref history and source store paths of each recorded
revision, against real git and real Nix (builtins.fetchGit and Nix's copies of subdirectories)."""

from __future__ import annotations

import json
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from buildref.git.source import GitRepository
from buildref.git.tree_nar import TreeRule
from helpers import Nix, assert_error_line, git
from servicectl import ServiceProcess, wait_for

ODD_BRANCH = "it's;--odd\u00e9"


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "app repo"
    (path / "sub" / "deep").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "sub" / "deep" / "x.txt").write_text("x\n")
    (path / "docs").mkdir()
    (path / "docs" / "only-ignored.md").write_text("notes\n")
    (path / ".gitattributes").write_text("docs/** export-ignore\n")
    (path / "README").write_text("v1\n")
    commit(path, "one")
    git(path, "tag", "v1")
    (path / "README").write_text("v2\n")
    commit(path, "two")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "tag", "-a", "v2", "-m", "annotated")
    git(path, "branch", ODD_BRANCH)
    return path


@pytest.fixture
def watched(repo: Path) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(repository=[{"name": "app", "path": str(repo)}])
    try:
        yield svc.start()
    finally:
        svc.close()


def cli(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "buildref", *args, "--socket", str(service.query_socket)],
                          capture_output=True, check=False)


def cli_json(service: ServiceProcess, *args: str) -> object:
    proc = cli(service, *args, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_record_keeps_ref_history_and_sources(nix: Nix, repo: Path, service: ServiceProcess) -> None:
    v1, v2 = git(repo, "rev-parse", "v1^{commit}"), git(repo, "rev-parse", "v2^{commit}")
    result = cli_json(service, "record", str(repo))
    assert isinstance(result, dict)
    assert result["refs"] == {"HEAD": v2, "refs/heads/main": v2, f"refs/heads/{ODD_BRANCH}": v2,
                              "refs/tags/v1": v1, "refs/tags/v2": v2}
    assert result["revisionsIndexed"] == 2

    # the root source of each revision is what builtins.fetchGit gives
    for rev in (v1, v2):
        url = "file://" + quote(str(repo))  # Nix takes a path with a space only as a URL
        expr = f'builtins.fetchGit {{ url = "{url}"; ref = "main"; rev = "{rev}"; }}'
        want = nix.eval_json(f"let s = {expr}; in {{ inherit (s) narHash; path = s.outPath; }}")
        assert isinstance(want, dict)
        looked_up = cli_json(service, "lookup", str(repo), rev)
        assert isinstance(looked_up, dict) and looked_up["rev"] == rev
        by_key = {(s["subdir"] or "", rule): (s["narHash"], s["storePath"])
                  for s in looked_up["sources"] for rule in s["rules"]}
        assert by_key[("", "export-ignore")] == (want["narHash"], want["path"])
        # every directory, under both rules, as Nix copies ./dir (proven against Nix in
        # test_git_source): its NAR hash names this revision and directory
        gitrepo = GitRepository(str(repo))
        for subdir in ("sub", "sub/deep", "docs"):
            for rule in TreeRule:
                info = gitrepo.source(rev, subdir, rule)
                why = cli_json(service, "why", info.nar_hash.sri)
                assert isinstance(why, dict)
                named = {(s["rev"], s["subdir"]) for s in why["sources"] if rule.value in s["rules"]}
                if (subdir, rule) == ("docs", TreeRule.EXPORT_IGNORE):
                    # docs/ holds only export-ignore'd files: git archive leaves it empty, and an
                    # empty directory names no revision
                    assert why["sources"] == [], why
                else:
                    assert (rev, subdir) in named, (subdir, rule, why)
        docs = {rule: gitrepo.source(rev, "docs", rule).nar_hash for rule in TreeRule}
        assert docs[TreeRule.EXPORT_IGNORE] != docs[TreeRule.RAW]
        assert by_key[("", "export-ignore")] != by_key[("", "raw")]

    # a new commit on main: main and HEAD move, the tags do not; history keeps both
    (repo / "README").write_text("v3\n")
    v3 = commit(repo, "three")
    result = cli_json(service, "record", str(repo))
    assert isinstance(result, dict) and result["repository"] == str(repo)
    assert sorted(m["ref"] for m in result["moved"]) == ["HEAD", "refs/heads/main"]
    assert result["revisionsIndexed"] == 1
    history = cli_json(service, "refs", str(repo))
    assert isinstance(history, list)
    main = [m["rev"] for m in history if m["ref"] == "refs/heads/main"]
    assert main == [v2, v3]
    assert [m["rev"] for m in history if m["ref"] == f"refs/heads/{ODD_BRANCH}"] == [v2]

    # recording again changes nothing; a deleted branch is recorded as deleted
    again = cli_json(service, "record", str(repo))
    assert isinstance(again, dict) and again["moved"] == [] and again["revisionsIndexed"] == 0
    git(repo, "branch", "-D", ODD_BRANCH)
    gone = cli_json(service, "record", str(repo))
    assert isinstance(gone, dict) and gone["moved"] == [{"ref": f"refs/heads/{ODD_BRANCH}", "rev": None}]
    text = cli(service, "refs", str(repo)).stdout.decode()
    assert f"(deleted)  refs/heads/{ODD_BRANCH}" in text


def test_record_named_refs_and_errors(repo: Path, service: ServiceProcess, tmp_path: Path) -> None:
    result = cli_json(service, "record", str(repo), "v1", ODD_BRANCH)
    assert isinstance(result, dict)
    assert sorted(result["refs"]) == [f"refs/heads/{ODD_BRANCH}", "refs/tags/v1"]
    assert_error_line(cli(service, "record", str(repo), "no-such-ref"), "no ref 'no-such-ref'")
    assert_error_line(cli(service, "record", "elsewhere"), "no repository 'elsewhere'")
    not_git = tmp_path / "plain"
    not_git.mkdir()
    assert_error_line(cli(service, "record", str(not_git)), "not a git repository")
    assert_error_line(cli(service, "refs", str(tmp_path)), "has not been recorded")
    # an unconfigured repository, by absolute path, is recorded under its path
    other = tmp_path / "other"
    subprocess.run(["git", "init", "-q", "-b", "main", str(other)], check=True)
    (other / "f").write_text("f\n")
    rev = commit(other, "f")
    result = cli_json(service, "record", str(other))
    assert isinstance(result, dict) and result["repository"] == str(other) and result["refs"]["HEAD"] == rev


def test_only_owners_have_unconfigured_paths_recorded(watched: ServiceProcess, tmp_path: Path) -> None:
    """The query socket is open to every user and the service may read more than they can: a
    user names only configured repositories or their own (the kernel says who asks)."""
    nobody = pwd.getpwnam("nobody")
    as_nobody = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                 sys.executable, "-m", "buildref"]
    service = watched
    socket = ["--socket", str(service.query_socket)]
    other = tmp_path / "root-owned"
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*as_nobody, *args, *socket], capture_output=True, check=False)

    assert_error_line(run("record", str(other)), "not a git repository of yours")
    allowed = run("record", "app", "--json")
    assert allowed.returncode == 0, allowed.stderr.decode()
    assert json.loads(allowed.stdout)["repository"] == "app"
    # root may name any path
    assert cli(service, "record", str(other)).returncode == 0


def test_configured_repositories_are_watched(repo: Path, watched: ServiceProcess) -> None:
    """Recorded at start, and again within moments of every ref change: a commit, a new tag, a
    branch deleted (loose refs and packed-refs alike)."""
    service = watched

    def history() -> list[dict[str, object]]:
        try:
            return service.call("refs", {"repo": "app"})  # type: ignore[no-any-return]
        except AssertionError:
            return []

    def moves_of(ref: str) -> list[object]:
        return [m["rev"] for m in history() if m["ref"] == ref]

    wait_for(lambda: moves_of("refs/heads/main") != [], what="the refs recorded at start")
    (repo / "README").write_text("watched\n")
    v3 = commit(repo, "three")
    wait_for(lambda: moves_of("refs/heads/main")[-1:] == [v3], what="the commit on main")
    git(repo, "tag", "v3")
    wait_for(lambda: moves_of("refs/tags/v3") == [v3], what="the new tag")
    git(repo, "pack-refs", "--all")  # refs now live in packed-refs: nothing moves
    git(repo, "branch", "-D", ODD_BRANCH)
    wait_for(lambda: moves_of(f"refs/heads/{ODD_BRANCH}")[-1:] == [None], what="the deleted branch")
    assert moves_of("refs/tags/v3") == [v3] and moves_of("refs/tags/v1")[-1] is not None
    log = service.log_lines()
    assert any(line["event"] == "refs moved" for line in log)


def test_urls_are_mirrored_under_the_state_dir(repo: Path, service: ServiceProcess) -> None:
    url = "file://" + quote(str(repo))
    first = cli_json(service, "record", url)
    assert isinstance(first, dict) and first["repository"] == url
    assert first["refs"]["refs/tags/v1"] == git(repo, "rev-parse", "v1^{commit}")
    mirrors = list((service.base / "state" / "mirrors").iterdir())
    assert len(mirrors) == 1 and (mirrors[0] / "HEAD").exists()  # bare
    (repo / "README").write_text("upstream moved\n")
    new = commit(repo, "upstream")
    again = cli_json(service, "record", url)  # fetched before recording
    assert isinstance(again, dict) and again["refs"]["refs/heads/main"] == new
    assert {"ref": "refs/heads/main", "rev": new} in again["moved"]
    assert_error_line(cli(service, "record", "file:///nonexistent/repo"), "git clone")
