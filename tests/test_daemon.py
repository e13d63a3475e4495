"""Multi-user topology: a real nix-daemon (root) writes the derivations, an unprivileged user
instantiates through it and runs buildref on the results and on a repository root owns."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drvsets import DrvSet
from gitrepos import RandomRepo
from helpers import NIX_CONFIG, Nix

USER = "nobody"
UID, GID = pwd.getpwnam(USER).pw_uid, pwd.getpwnam(USER).pw_gid


class Daemon:
    def __init__(self, socket: Path, home: Path) -> None:
        self.socket = socket
        self.home = home

    def as_user(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` as the unprivileged user, talking to this daemon."""
        env = {"PATH": os.environ["PATH"], "HOME": str(self.home), "NIX_CONFIG": NIX_CONFIG,
               "NIX_REMOTE": f"unix://{self.socket}"}
        return subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", *argv],
                              env=env, capture_output=True, check=False)


@pytest.fixture(scope="module")
def daemon(nix: Nix) -> Iterator[Daemon]:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.fail("the multi-user test needs root and setpriv (util-linux)")
    # Short paths: a Unix socket path must fit in about 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="brd"))
    base.chmod(0o755)
    home = base / "home"
    home.mkdir()
    shutil.chown(home, USER)
    socket = base / "socket"
    env = {**nix.env, "NIX_CONFIG": NIX_CONFIG + "\nallowed-users = *", "NIX_DAEMON_SOCKET_PATH": str(socket)}
    proc = subprocess.Popen(["nix-daemon"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"nix-daemon did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.05)
    try:
        yield Daemon(socket, home)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def _ok(proc: subprocess.CompletedProcess[bytes]) -> bytes:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def test_user_reads_what_the_daemon_wrote(daemon: Daemon) -> None:
    nix_file = DrvSet(daemon.home / "set", 5, size=20, ca=False).write()
    for path in [daemon.home / "set", *(daemon.home / "set").rglob("*")]:
        shutil.chown(path, USER)
    drvs = _ok(daemon.as_user("nix-instantiate", str(nix_file))).decode().split()
    assert drvs and all(os.stat(d).st_uid == 0 for d in drvs)  # written by the daemon, as root
    buildref = [sys.executable, "-m", "buildref"]
    assert _ok(daemon.as_user(*buildref, "drv", "show", "-r", *drvs)) == _ok(
        daemon.as_user("nix", "show-derivation", "-r", *drvs))
    _ok(daemon.as_user(*buildref, "drv", "verify", "-r", *drvs))


def test_any_user_hashes_any_users_repository(nix: Nix, daemon: Daemon, tmp_path: Path) -> None:
    """libgit2's ownership check must not stop root (the service) or a user reading objects."""
    base = Path(tempfile.mkdtemp(prefix="brr"))
    try:
        base.chmod(0o755)
        repo = RandomRepo(base / "repo", 9)
        rev = repo.build(2)[-1]
        expr = f'(builtins.fetchGit {{ url = "{repo.path}"; rev = "{rev}"; }}).narHash'
        want = nix.run("nix", "eval", "--impure", "--raw", "--expr", expr).decode()
        as_user = _ok(daemon.as_user(sys.executable, "-m", "buildref", "hash", str(repo.path), "--rev", rev))
        assert f"narHash\t{want}" in as_user.decode()
        for path in [repo.path, *repo.path.rglob("*")]:
            os.lchown(path, UID, GID)
        as_root = subprocess.run([sys.executable, "-m", "buildref", "hash", str(repo.path), "--rev", rev],
                                 capture_output=True, check=True).stdout
        assert as_root == as_user
    finally:
        shutil.rmtree(base, ignore_errors=True)
