"""A local user has the root service read no repository they could not read themselves (issue 12,
items 1 and 7): every trick that points a user's path at a private repository — a ``gitdir:``
file, a ``.git`` link, links inside their own git directory, a worktree's ``commondir``,
alternates — is refused, before recording and again at every later read, including a swap made
while git work runs; and the answers do not tell a missing path from an unreadable one.

Round one checked only the owner of the top directory, then let libgit2 follow ``gitdir:``: it
recorded the private repository's refs and answered them to the user."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from buildref.config import Repository
from buildref.errors import GitError
from buildref.git.source import GitRepository
from buildref.sources.gitwork import ATTEMPTS, GitWork
from helpers import NOBODY, as_nobody, assert_error_line, chown_nobody, git, index_facts
from servicectl import ServiceProcess

NOT_YOURS = "is not a git repository of yours that you can read"


def commit(repo: Path, message: str) -> str:
    (repo / "file").write_text(message + "\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")





@pytest.fixture
def secret(service: ServiceProcess) -> tuple[Path, str]:
    """Root's private repository (0700), with one commit."""
    path = service.base / "secret"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    rev = commit(path, "the secret plan")
    path.chmod(0o700)
    return path, rev


@pytest.fixture
def home(service: ServiceProcess) -> Path:
    """A directory of nobody's, where nobody makes repositories."""
    path = service.base / "home"
    path.mkdir()
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    return path



def recorded_repositories(service: ServiceProcess) -> list[str]:
    names: list[str] = index_facts(service.db_path)["repositories"]
    return names


def nobodys_repo(path: Path) -> str:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    rev = commit(path, "nobody's own")
    chown_nobody(path)
    return rev


def test_pointers_to_a_private_repository_are_refused(service: ServiceProcess, secret: tuple[Path, str],
                                                      home: Path) -> None:
    secret_path, secret_rev = secret
    tricks: dict[str, Path] = {}
    # a .git file naming root's repository (what round one followed)
    tricks["gitdir file"] = home / "gitdir-file"
    tricks["gitdir file"].mkdir()
    (tricks["gitdir file"] / ".git").write_text(f"gitdir: {secret_path}/.git\n")
    # a .git link, and the whole path a link
    tricks[".git link"] = home / "dot-git-link"
    tricks[".git link"].mkdir()
    (tricks[".git link"] / ".git").symlink_to(secret_path / ".git")
    tricks["path link"] = home / "path-link"
    tricks["path link"].symlink_to(secret_path)
    # a worktree whose commondir is root's repository
    tricks["commondir"] = home / "worktree"
    (tricks["commondir"] / "gitdir").mkdir(parents=True)
    (tricks["commondir"] / "gitdir" / "HEAD").write_text("ref: refs/heads/main\n")
    (tricks["commondir"] / "gitdir" / "commondir").write_text(f"{secret_path}/.git\n")
    (tricks["commondir"] / ".git").write_text("gitdir: gitdir\n")
    # another user's repository that nobody can read, and a path that is not there
    readable = service.base / "roots-readable"
    subprocess.run(["git", "init", "-q", "-b", "main", str(readable)], check=True)
    commit(readable, "root's, world-readable")
    tricks["someone else's"] = readable
    tricks["missing"] = home / "not-there"
    tricks["missing, under private"] = secret_path / "nothing"
    chown_nobody(home)
    for trick, path in tricks.items():
        proc = as_nobody(service.query_socket, "record", str(path))
        assert_error_line(proc, NOT_YOURS)
        message = proc.stderr.decode().replace(str(path), "PATH")
        assert message == f"error: 'PATH' {NOT_YOURS}: a user can record only their own repositories" \
            " (root can record any)\n", trick
        assert secret_rev not in proc.stdout.decode()
    assert recorded_repositories(service) == []


def test_links_inside_a_users_git_directory_are_refused(service: ServiceProcess, secret: tuple[Path, str],
                                                        home: Path) -> None:
    secret_path, secret_rev = secret
    cases = {"objects": secret_path / ".git" / "objects", "refs": secret_path / ".git" / "refs"}
    for entry, target in cases.items():
        path = home / f"linked-{entry}"
        nobodys_repo(path)
        shutil.rmtree(path / ".git" / entry)
        (path / ".git" / entry).symlink_to(target)
        os.lchown(path / ".git" / entry, NOBODY.pw_uid, NOBODY.pw_gid)
        proc = as_nobody(service.query_socket, "record", str(path))
        assert_error_line(proc, f"'{path}/.git/{entry}' is a symbolic link")
        assert secret_rev not in proc.stdout.decode()
    # borrowed objects: an alternates file naming root's object database
    borrowing = home / "borrowing"
    nobodys_repo(borrowing)
    (borrowing / ".git" / "objects" / "info" / "alternates").write_text(f"{secret_path}/.git/objects\n")
    proc = as_nobody(service.query_socket, "record", str(borrowing))
    assert_error_line(proc, "borrows objects from another repository")
    assert recorded_repositories(service) == []


def test_a_swap_after_recording_is_caught_at_the_next_read(service: ServiceProcess, secret: tuple[Path, str],
                                                           home: Path) -> None:
    secret_path, secret_rev = secret
    path = home / "app"
    own_rev = nobodys_repo(path)
    recorded = as_nobody(service.query_socket, "record", str(path), "--json")
    assert recorded.returncode == 0, recorded.stderr.decode()
    assert own_rev in recorded.stdout.decode()
    looked = as_nobody(service.query_socket, "lookup", str(path), "main", "--json")
    assert looked.returncode == 0 and own_rev in looked.stdout.decode(), looked.stderr.decode()
    # the user's .git becomes a link to root's (the check at record time is long past)
    (path / ".git").rename(path / "own.git")
    (path / ".git").symlink_to(secret_path / ".git")
    for args in (["lookup", str(path), "main"], ["record", str(path)]):
        proc = as_nobody(service.query_socket, *args)
        assert_error_line(proc, NOT_YOURS)
        assert secret_rev not in proc.stdout.decode() + proc.stderr.decode()
    # put back: read again
    (path / ".git").unlink()
    (path / "own.git").rename(path / ".git")
    looked = as_nobody(service.query_socket, "lookup", str(path), "main", "--json")
    assert looked.returncode == 0 and own_rev in looked.stdout.decode(), looked.stderr.decode()


def test_a_swap_during_git_work_throws_the_work_away(tmp_path: Path, secret: tuple[Path, str],
                                                     home: Path) -> None:
    """The check before and the read are two moments: the work a swap overlapped is never answered."""
    secret_path, secret_rev = secret
    path = home / "app"
    own_rev = nobodys_repo(path)
    objects = path / ".git" / "objects"
    runs: list[str] = []

    def swapping(repo: GitRepository) -> str:
        # mid-work, the objects become root's (then are put back): what was read is suspect
        objects.rename(path / ".git" / "objects.own")
        objects.symlink_to(secret_path / ".git" / "objects")
        try:
            runs.append(repo.resolve(secret_rev).message)  # what the attacker is after
            return runs[-1]
        finally:
            objects.unlink()
            (path / ".git" / "objects.own").rename(objects)

    work = GitWork(str(tmp_path / "store"))
    repo = Repository(str(path), str(path), owner=NOBODY.pw_uid)

    with pytest.raises(GitError, match="kept changing while it was read"):
        asyncio.run(work.run(repo, swapping))
    assert runs == ["the secret plan\n"] * ATTEMPTS  # read, and never answered
    # and without a swap, the same work is answered
    assert asyncio.run(work.run(repo, lambda git: str(git.resolve("HEAD").id))) == own_rev


def test_queries_do_not_tell_missing_from_unreadable(service: ServiceProcess,
                                                     secret: tuple[Path, str]) -> None:
    """Item 7: ``refs /root/secret`` and ``refs /root/nonexistent`` answered differently (one looked
    at the path as root). Queries go by recorded names alone."""
    secret_path, _ = secret
    missing = service.base / "nonexistent"
    for command in ("refs", "lookup"):
        args = [] if command == "refs" else ["main"]
        answers = []
        for path in (secret_path, missing):
            proc = as_nobody(service.query_socket, command, str(path), *args)
            assert_error_line(proc, "has not been recorded")
            answers.append(proc.stderr.decode().replace(str(path), "PATH"))
        assert answers[0] == answers[1], command
