"""Faults in what the service watches and keeps: a configured repository that vanishes and comes
back, an index damaged before the start or deleted while running, two services on one state
directory, and the modes of everything it writes whatever the umask. Each runs the real service as
a process; each docstring says what round one (e4b2a81) did, where the test fails on it."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from buildsets import salt
from helpers import Nix, git
from servicectl import ServiceProcess, run_hook, wait_for


def commit(repo: Path, text: str) -> str:
    (repo / "README").write_text(text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", text)
    return git(repo, "rev-parse", "HEAD")


def new_repo(path: Path) -> str:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    return commit(path, "one")


def drvs(nix: Nix, directory: Path, system: str, count: int) -> list[str]:
    """Real .drv files (the hook socket accepts only store derivations that exist)."""
    path = directory / f"drvs-{salt()}.nix"
    path.write_text(f"""builtins.genList (i: derivation {{
  name = "fault-${{toString i}}"; system = "{system}"; builder = "/bin/sh"; salt = "{salt()}";
}}) {count}""")
    return nix.instantiate(path)


def main_of(svc: ServiceProcess, repo: str) -> str | None:
    """Where the index says ``refs/heads/main`` of ``repo`` points now."""
    moves = [m["rev"] for m in svc.call("refs", {"repo": repo}) if m["ref"] == "refs/heads/main"]
    return moves[-1] if moves else None


def logged(svc: ServiceProcess, event: str, **fields: Any) -> bool:
    return any(line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
               for line in svc.log_lines())


def alive(svc: ServiceProcess) -> bool:
    return svc.proc is not None and svc.proc.poll() is None


def delivered(svc: ServiceProcess, drv: str) -> None:
    """The hook, as Nix runs it, got ``ok`` (it says nothing), and a query answers."""
    proc = run_hook(svc.hook_env(), drv)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
    assert any(e["drvPath"] == drv for e in svc.events())


def plain_lines(text: str) -> list[str]:
    """What is not a JSON log line: what ``main`` printed."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("{")]


# -- 8: a watched repository disappears --------------------------------------------------------

def test_a_watched_repository_that_vanishes_is_watched_again(nix: Nix, system: str, tmp_path: Path) -> None:
    """The checkout is moved away (a commit made there meanwhile), moved back, its refs/ removed and
    put back; a second configured repository does not exist at start and appears later. The
    service answers the hook and queries throughout, and records what each commit did.

    Round one exited at the first recording after the move: pygit2's NotFoundError ("failed to
    open directory '.../refs/'") left the watcher, ended the TaskGroup and the service (both
    sockets gone), so the first assertion below that it is alive fails."""
    app, away, later = tmp_path / "app", tmp_path / "away", tmp_path / "later"
    first = new_repo(app)
    events = drvs(nix, tmp_path, system, 2)
    svc = ServiceProcess(repository=[{"name": "app", "path": str(app)},
                                     {"name": "later", "path": str(later)}]).start()
    try:
        wait_for(lambda: main_of(svc, "app") == first, what="app recorded at start")
        assert logged(svc, "watched directory not found", name="later")

        os.rename(app, away)
        moved_commit = commit(away, "made while away")  # the old watch still sees it: a recording fails
        wait_for(lambda: not alive(svc) or logged(svc, "watched directory not found", name="app"),
                 what="the move noticed")
        assert alive(svc), svc.log_text()[-3000:]
        delivered(svc, events[0])
        assert svc.call("status")["events"]["received"] >= 1
        assert main_of(svc, "app") == first  # what it knew, still answered

        os.rename(away, app)
        back = commit(app, "back home")
        later_first = new_repo(later)
        wait_for(lambda: main_of(svc, "app") == back, what="the commit after the move back")
        wait_for(lambda: main_of(svc, "later") == later_first, what="the repository that appeared")
        assert moved_commit != back

        refs = app / ".git" / "refs"
        os.rename(refs, tmp_path / "refs.bak")  # the recording this triggers fails in pygit2
        wait_for(lambda: not alive(svc) or logged(svc, "recording failed", name="app"),
                 what="the failed recording")
        assert alive(svc), svc.log_text()[-3000:]
        delivered(svc, events[1])
        os.rename(tmp_path / "refs.bak", refs)
        again = commit(app, "refs back")
        wait_for(lambda: main_of(svc, "app") == again, what="the commit after refs/ came back")

        assert alive(svc)
        assert not logged(svc, "task failed; restarting it")  # the watcher itself handled every fault
    finally:
        svc.close()


# -- 9: a damaged index at start ---------------------------------------------------------------

def test_a_damaged_index_stops_the_start_with_one_error_line(tmp_path: Path) -> None:
    """An index whose first 32 bytes were overwritten, a file that is not SQLite at all, and a
    directory where the index should be: each start exits non-zero within seconds, with one
    ``error:`` line naming the file and what SQLite said, and no traceback.

    Round one printed sqlite3's traceback, then hung: the migration's aiosqlite connection (a
    non-daemon thread) was never closed, so the process never exited (and under Type=notify,
    systemd would have restarted it in a loop) — the communicate() below times out."""
    first = ServiceProcess().start()
    first.stop()
    good = first.db_path.read_bytes()
    first.close()
    not_a_database = "file is not a database"  # SQLite's words
    damages = {
        "header overwritten": (lambda p: p.write_bytes(b"corrupt!" * 4 + good[32:]), not_a_database),
        "not SQLite": (lambda p: p.write_bytes(b"a text file, not an index\n" * 200), not_a_database),
        "a directory": (lambda p: p.mkdir(), "it is a directory"),
    }
    for name, (damage, said) in damages.items():
        svc = ServiceProcess()
        try:
            svc.db_path.parent.mkdir(parents=True)
            damage(svc.db_path)
            status, err = svc.refused_start()
            assert status == 1, (name, err)
            assert "Traceback" not in err, (name, err)
            assert plain_lines(err) == [f"error: cannot open the index {svc.db_path}: {said}"], (name, err)
            assert not svc.hook_socket.exists()  # it never served
        finally:
            svc.close()


# -- 10: the index deleted while running; two services on one state directory -----------------

def test_a_deleted_index_stops_acks_and_the_service_exits(nix: Nix, system: str, tmp_path: Path) -> None:
    """``rm buildref.db*`` under a running service: the next hook event is committed into the
    unlinked file but not acknowledged, so the hook spools it; the service says so in one
    ``error:`` line and exits non-zero (systemd restarts it); the restarted service, on a fresh
    index, records the spooled event.

    Round one acknowledged the event (the hook printed nothing, nothing was spooled) into the
    deleted file, where a restart lost it — the first assertion after the rm fails."""
    before, after = drvs(nix, tmp_path, system, 2)
    svc = ServiceProcess().start()
    try:
        delivered(svc, before)
        svc.wait_idle()
        for path in svc.db_path.parent.glob("buildref.db*"):
            path.unlink()
        proc = run_hook(svc.hook_env(), after)
        err = proc.stderr.decode()
        assert proc.returncode == 0 and "spooled" in err and "LOST" not in err, err
        assert len(list(svc.spool.glob("*.json"))) == 1
        assert svc.proc is not None
        code = svc.proc.wait(timeout=15)
        svc.proc = None
        assert code == 1, svc.log_text()[-3000:]
        text = svc.log_text()
        assert "Traceback" not in text
        [line] = plain_lines(text)
        assert line.startswith(f"error: the index {svc.db_path} was deleted or replaced"), line
        assert logged(svc, "index lost", level="critical")

        svc.start()  # what systemd's Restart=on-failure does
        svc.wait_idle()
        # the spooled event; the first one went with the deleted file
        assert [e["drvPath"] for e in svc.events()] == [after]
        assert list(svc.spool.glob("*.json")) == []
    finally:
        svc.close()


def test_a_second_service_on_the_same_state_directory_refuses_to_start(tmp_path: Path) -> None:
    """The second service (its own sockets, the same state directory) exits non-zero with one
    ``error:`` line naming the first's pid; the first goes on serving.

    Round one started the second as well: two services draining one spool and writing one index
    — the communicate() below times out."""
    first = ServiceProcess().start()
    second = ServiceProcess(state_dir=str(first.base / "state"))
    try:
        status, err = second.refused_start()  # raises if it runs on the first one's state directory
        assert status == 1 and "Traceback" not in err, err
        assert first.proc is not None
        assert plain_lines(err) == [f"error: another buildref serve (pid {first.proc.pid}) is using the "
                                    f"state directory {first.base / 'state'}: stop it, or give this one "
                                    "its own state_dir"], err
        assert not second.hook_socket.exists() and not second.query_socket.exists()
        assert first.call("status")["pid"] == first.proc.pid
        assert first.stop() == 0
    finally:
        first.close()
        second.close()


# -- 12: private state, whatever the umask -----------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_the_state_is_private_whatever_the_umask(umask: int, tmp_path: Path) -> None:
    """Run as root with ``umask``: the state directory, the spool, the mirrors directory and each
    mirror are 0700, the index (with its WAL and shared-memory files) and the lock 0600; nothing
    in the state directory is open to other users. Under 0o022 the directories (and the index
    file) exist already with round one's modes and are narrowed, and the log says so.

    Round one made the state directory 0755 whatever the umask (and the mirrors 0755 under 0o022):
    any local user could read the index and a mirrored private repository."""
    upstream = tmp_path / "upstream"
    new_repo(upstream)
    svc = ServiceProcess()
    state = svc.base / "state"
    if umask == 0o022:
        for directory in (state, svc.spool, state / "mirrors"):
            directory.mkdir(mode=0o755, parents=True)
            directory.chmod(0o755)
        svc.db_path.touch()
        svc.db_path.chmod(0o644)
    try:
        svc.start(umask=umask)
        url = "file://" + quote(str(upstream))
        recorded = svc.call("record", {"repo": url})
        assert recorded["refs"]["refs/heads/main"] == git(upstream, "rev-parse", "HEAD")

        def mode(path: Path) -> int:
            return stat.S_IMODE(path.stat().st_mode)

        [mirror] = (state / "mirrors").iterdir()
        assert {path.name: oct(mode(path)) for path in (state, svc.spool, state / "mirrors", mirror)} == {
            "state": "0o700", "spool": "0o700", "mirrors": "0o700", mirror.name: "0o700"}
        files = {name: oct(mode(state / name))
                 for name in ("buildref.db", "buildref.db-wal", "buildref.db-shm", "buildref.lock")}
        assert files == dict.fromkeys(files, "0o600")
        assert all(mode(path) & 0o077 == 0 for path in state.iterdir())
        log = svc.log_lines()
        narrowed = {line["path"] for line in log if line["event"] == "directory narrowed"}
        files_narrowed = {line["path"] for line in log if line["event"] == "database file narrowed"}
        if umask == 0o022:
            assert narrowed == {str(state), str(svc.spool), str(state / "mirrors")}
            assert files_narrowed == {str(svc.db_path)}
        else:
            assert narrowed == files_narrowed == set()
        assert svc.stop() == 0
    finally:
        svc.close()


# -- the spool directory removed while the service runs ----------------------------------------

def test_a_spool_directory_made_again_is_still_drained(nix: Nix, system: str, tmp_path: Path) -> None:
    """The spool directory removed under the running service (its watch goes with it), then a
    hook that cannot reach the service makes it again and spools there: the event is recorded
    anyway, by the drain's periodic look."""
    [drv] = drvs(nix, tmp_path, system, 1)
    svc = ServiceProcess().start()
    try:
        svc.spool.rmdir()
        unreachable = {**svc.hook_env(), "BUILDREF_HOOK_SOCKET": str(tmp_path / "nobody-listens.sock")}
        proc = run_hook(unreachable, drv)
        assert proc.returncode == 0 and "spooled" in proc.stderr.decode(), proc.stderr.decode()
        wait_for(lambda: any(e["drvPath"] == drv and e["source"] == "spool" for e in svc.events()),
                 timeout=20, what="the spooled event recorded")
        wait_for(lambda: list(svc.spool.glob("*.json")) == [], what="the spool file removed")
        assert alive(svc)
    finally:
        svc.close()
