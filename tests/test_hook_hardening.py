"""The post-build hook under hostile inputs: bad timeouts, and a spool directory that someone other
than root (the service user, on NixOS) could swap for a symlink. Runs the real hook as Nix does,
as root, against real sockets and directories."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from servicectl import HOOK, run_hook

DRV = "/nix/store/00000000000000000000000000000000-x.drv"
BAD_TIMEOUTS = ["1e999", "inf", "-inf", "nan", "-1", "0", "-0", "1e9", "61", "abc", "", " ", "0x10"]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose path is short enough for Unix sockets."""
    path = Path(tempfile.mkdtemp(prefix="brh", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def nobody() -> int:
    if os.geteuid() != 0:
        pytest.fail("these tests run as root, as the hook does under the nix-daemon")
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.fail("the user 'nobody' is required")


def _spooled(directory: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def _lost_line(proc: subprocess.CompletedProcess[bytes], *fragments: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert err.count("\n") == 1 and err.endswith("\n") and "LOST" in err, err
    for fragment in fragments:
        assert fragment in err, err


# -- 11: BUILDREF_HOOK_TIMEOUT ------------------------------------------------------------------

def test_bad_timeouts_wait_the_default_second_then_spool(short_dir: Path) -> None:
    # a service that accepts and never answers: every bad value waits the default 1 s, then spools
    path = short_dir / "mute.sock"

    def hook(i: int) -> tuple[str, subprocess.CompletedProcess[bytes], float]:
        value = BAD_TIMEOUTS[i]
        env = {"PATH": os.environ.get("PATH", ""), "DRV_PATH": DRV, "OUT_PATHS": "",
               "BUILDREF_HOOK_SOCKET": str(path), "BUILDREF_SPOOL_DIR": str(short_dir / f"s{i}"),
               "BUILDREF_HOOK_TIMEOUT": value}
        start = time.monotonic()
        try:
            proc = subprocess.run([str(HOOK)], env=env, capture_output=True, check=False, timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"BUILDREF_HOOK_TIMEOUT={value!r}: the hook did not give up")
        return value, proc, time.monotonic() - start

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(len(BAD_TIMEOUTS) + 1)
        with ThreadPoolExecutor(len(BAD_TIMEOUTS)) as pool:
            results = list(pool.map(hook, range(len(BAD_TIMEOUTS))))
    for i, (value, proc, elapsed) in enumerate(results):
        err = proc.stderr.decode()
        assert proc.returncode == 0 and err.count("\n") == 1 and "spooled" in err, (value, err)
        assert 0.9 <= elapsed < 10, (value, elapsed)
        assert [e["drv"] for e in _spooled(short_dir / f"s{i}")] == [DRV], value


class _Answering:
    """A service stand-in on a real socket: reads each event line, answers ``ok``."""

    def __init__(self, path: Path) -> None:
        self.events: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                line = b""
                while not line.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    line += chunk
                self.events.append(line)
                conn.sendall(b"ok\n")

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def test_bad_timeouts_still_deliver(short_dir: Path) -> None:
    server = _Answering(short_dir / "hook.sock")
    try:
        for value in BAD_TIMEOUTS:
            spool = short_dir / "spool"
            env = {"BUILDREF_HOOK_SOCKET": str(short_dir / "hook.sock"), "BUILDREF_SPOOL_DIR": str(spool),
                   "BUILDREF_HOOK_TIMEOUT": value}
            proc = run_hook(env, DRV)
            assert proc.returncode == 0 and proc.stderr == b"", (value, proc.stderr)
            assert not spool.exists(), value
    finally:
        server.close()
    assert [json.loads(e)["drv"] for e in server.events] == [DRV] * len(BAD_TIMEOUTS)


# -- 13: the spool directory ----------------------------------------------------------------------

def _down(tmp_path: Path, spool: Path, **extra: str) -> dict[str, str]:
    """The hook's environment with no service: the event goes to ``spool``."""
    return {"BUILDREF_HOOK_SOCKET": str(tmp_path / "none.sock"), "BUILDREF_SPOOL_DIR": str(spool), **extra}


def test_a_missing_spool_directory_is_made_private(tmp_path: Path) -> None:
    spool = tmp_path / "state" / "spool"
    proc = run_hook(_down(tmp_path, spool), DRV)
    assert proc.returncode == 0 and "spooled" in proc.stderr.decode()
    assert spool.stat().st_mode & 0o777 == 0o700 and spool.stat().st_uid == os.geteuid()
    assert [e["drv"] for e in _spooled(spool)] == [DRV]


def test_a_symlinked_spool_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "anywhere"
    target.mkdir()
    spool = tmp_path / "spool"
    spool.symlink_to(target)
    proc = run_hook(_down(tmp_path, spool), DRV)
    _lost_line(proc, DRV, str(spool), "symlink")
    assert not list(target.iterdir())


def test_a_spool_directory_owned_by_someone_else_is_refused(tmp_path: Path, nobody: int) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chown(spool, nobody, -1)
    proc = run_hook(_down(tmp_path, spool), DRV)
    _lost_line(proc, DRV, str(spool), str(nobody))
    assert not list(spool.iterdir())
    # named as the service user, that owner is the expected one
    proc = run_hook(_down(tmp_path, spool, BUILDREF_SERVICE_USER="nobody"), DRV)
    assert proc.returncode == 0 and "spooled" in proc.stderr.decode(), proc.stderr
    assert [e["drv"] for e in _spooled(spool)] == [DRV]
    # an unknown service user is no reason to take any owner
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, nobody, -1)
    proc = run_hook(_down(tmp_path, other, BUILDREF_SERVICE_USER="no-such-user-here"), DRV)
    _lost_line(proc, DRV, "no-such-user-here")
    assert not list(other.iterdir())


def test_the_service_user_can_be_built_into_the_hook(tmp_path: Path, nobody: int) -> None:
    # as the NixOS module does it: the constant's line, replaced in a copy of the hook
    line = 'SERVICE_USER = ""'
    text = HOOK.read_text()
    assert text.count(line) == 1
    hook = tmp_path / "hook.py"
    hook.write_text(text.replace(line, 'SERVICE_USER = "nobody"'))
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chown(spool, nobody, -1)
    env = {**_down(tmp_path, spool), "DRV_PATH": DRV, "OUT_PATHS": ""}
    argv = ["/usr/bin/python3", "-I", "-S", str(hook)]
    proc = subprocess.run(argv, env=env, capture_output=True, check=False)
    assert proc.returncode == 0 and "spooled" in proc.stderr.decode(), proc.stderr
    assert [e["drv"] for e in _spooled(spool)] == [DRV]


# The hook, run as Nix runs it, with an audit hook that swaps the spool directory for a symlink to
# another directory at the moment the hook opens its temporary file: after the check, before the use.
_SWAP = """
import os, runpy, sys
spool, moved, elsewhere, hook = sys.argv[1:]
def swap(event, args):
    if event == "open" and not os.path.exists(moved) and os.path.basename(str(args[0])).startswith(".tmp-"):
        os.rename(spool, moved)
        os.symlink(elsewhere, spool)
sys.addaudithook(swap)
runpy.run_path(hook, run_name="__main__")
"""


def test_swapping_the_spool_directory_mid_write_cannot_redirect_it(tmp_path: Path) -> None:
    spool, moved, elsewhere = tmp_path / "spool", tmp_path / "moved", tmp_path / "elsewhere"
    spool.mkdir()
    elsewhere.mkdir()
    env = {**_down(tmp_path, spool), "DRV_PATH": DRV, "OUT_PATHS": ""}
    argv = ["/usr/bin/python3", "-I", "-S", "-c", _SWAP, str(spool), str(moved), str(elsewhere), str(HOOK)]
    proc = subprocess.run(argv, env=env, capture_output=True, check=False)
    assert proc.returncode == 0 and "spooled" in proc.stderr.decode(), proc.stderr
    assert spool.is_symlink() and moved.is_dir()  # the swap happened
    assert not list(elsewhere.iterdir())  # nothing went through the symlink
    assert [e["drv"] for e in _spooled(moved)] == [DRV]  # the event is in the directory it checked
    assert [p.name for p in moved.iterdir() if p.name.startswith(".tmp-")] == []
