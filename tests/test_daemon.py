"""Multi-user topology, as on NixOS: a real nix-daemon (root) runs the builds and our hook after
each one, talking to a real buildref service; an unprivileged user builds through the daemon,
queries the service, and runs buildref on what the daemon wrote and on a repository root owns."""

from __future__ import annotations

import json
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

from buildsets import build_set, flake_repo
from drvsets import DrvSet
from gitrepos import RandomRepo
from helpers import NIX_CONFIG, Nix
from servicectl import ServiceProcess

USER = "nobody"
UID, GID = pwd.getpwnam(USER).pw_uid, pwd.getpwnam(USER).pw_gid


class Daemon:
    def __init__(self, socket: Path, home: Path, service: ServiceProcess) -> None:
        self.socket = socket
        self.home = home
        self.service = service

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
    service = ServiceProcess().start()
    # the daemon runs the hook, as root, after every build it does
    env = {**service.nix_env(nix.env), "NIX_DAEMON_SOCKET_PATH": str(socket)}
    env["NIX_CONFIG"] += "\nallowed-users = *"
    proc = subprocess.Popen(["nix-daemon"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"nix-daemon did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.05)
    try:
        yield Daemon(socket, home, service)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        service.close()
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


def _own(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        os.lchown(p, UID, GID)


def test_daemon_builds_are_recorded_through_the_hook(daemon: Daemon) -> None:
    """The user builds through the daemon; the daemon's hook (root) reaches the service; the user
    reads the answer through the query socket (mode 0666)."""
    current = ("nix", "eval", "--raw", "--impure", "--expr", "builtins.currentSystem")
    system = _ok(daemon.as_user(*current)).decode()
    work = daemon.home / "work"
    work.mkdir()
    nix_file = build_set(work, system)
    repo = flake_repo(work, system)
    _own(work)
    drvs = _ok(daemon.as_user("nix-instantiate", str(nix_file), "-A", "multi", "-A", "fod", "-A", "chain3"))
    built = json.loads(_ok(daemon.as_user("nix", "build", "--json", "--no-link", *drvs.decode().split())))
    built += json.loads(_ok(daemon.as_user("nix", "build", "--json", "--no-link", f"git+file://{repo}")))
    service = daemon.service
    service.wait_idle()
    answer = daemon.as_user(sys.executable, "-m", "buildref", "builds", "--json", "--socket",
                            str(service.query_socket))
    recorded = {b["drvPath"]: b["outputs"] for b in json.loads(_ok(answer))}
    for item in built:
        assert recorded[item["drvPath"]] == item["outputs"], service.log_text()
    assert service.call("status")["events"]["failed"] == 0
    # the hook socket stays root's: the user cannot send events
    refused = daemon.as_user(sys.executable, "-m", "buildref", "import", drvs.decode().split()[0],
                             "--hook-socket", str(service.hook_socket), "--socket", str(service.query_socket))
    assert refused.returncode == 1 and b"Permission denied" in refused.stderr
