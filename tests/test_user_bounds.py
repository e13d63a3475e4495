"""Bounds on what one request and one user can make the service do (issue 12, item 2): a query
never writes; a record is bounded in time, in rows per user and in repositories per user; at most
a few requests per user run at once; a disk-space floor keeps room for builds; a full disk is said
as such; a flat folder of thousands of directories is recorded in linear time.

Round one: a lookup of a tip with no build stored sources for up to 200 ancestors (26 MB -> 399 MB),
a record ran as long and wrote as much as the repository asked, a full disk was reported as
"cannot rollback - no transaction is active", and a folder of 5,000 directories took over 60 s."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bigrepo import branchy
from buildref.api.operations import Admission, Caller, Services, call
from buildref.config import Limits
from buildref.errors import ServiceUnavailable
from buildref.git.source import GitRepository
from buildref.sources.recorder import new_trees, revision_forms
from buildsets import salt
from helpers import NOBODY, Nix, as_nobody, assert_error_line, chown_nobody, index_facts
from servicectl import ServiceProcess, run_hook, wait_for


def as_root(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "buildref", "--socket", str(service.query_socket), *args],
                          capture_output=True, check=False)


def counts(service: ServiceProcess) -> dict[str, Any]:
    """What the index holds (repositories, rows per recorder, table counts)."""
    return index_facts(service.db_path)


@pytest.fixture
def bounded() -> Iterator[ServiceProcess]:
    limits = {"user_repositories": 2}
    svc = ServiceProcess(limits=limits)
    try:
        yield svc.start()
    finally:
        svc.close()


def users_repo(service: ServiceProcess, name: str, branches: int, dirs: int) -> Path:
    home = service.base / "home"
    if not home.exists():
        home.mkdir()
        os.chown(home, NOBODY.pw_uid, NOBODY.pw_gid)
    path = home / name
    branchy(path, branches, dirs)
    chown_nobody(path)
    return path


def test_a_query_never_writes(bounded: ServiceProcess) -> None:
    path = users_repo(bounded, "app", 1, 50)
    assert as_nobody(bounded.query_socket, "record", str(path)).returncode == 0
    before, size = counts(bounded), os.stat(bounded.db_path).st_size
    for _ in range(3):  # a tip with no build: round one stored sources for its ancestors each time
        proc = as_nobody(bounded.query_socket, "lookup", str(path), "main", "--json")
        assert proc.returncode == 0, proc.stderr.decode()
        assert '"builds": []' in proc.stdout.decode()
    assert counts(bounded) == before and os.stat(bounded.db_path).st_size == size


def test_a_users_repositories_and_rows_are_bounded(bounded: ServiceProcess) -> None:
    small = [users_repo(bounded, f"small{i}", 1, 5) for i in range(3)]
    for path in small[:2]:
        proc = as_nobody(bounded.query_socket, "record", str(path))
        assert proc.returncode == 0, proc.stderr.decode()
    assert_error_line(as_nobody(bounded.query_socket, "record", str(small[2])), "2 repositories recorded",
                      "limits.user_repositories")
    # recording again what is already recorded is not a new repository; root is not bounded
    assert as_nobody(bounded.query_socket, "record", str(small[0])).returncode == 0
    before = counts(bounded)
    assert as_root(bounded, "record", str(small[2])).returncode == 0
    assert len(counts(bounded)["repositories"]) == len(before["repositories"]) + 1


def test_rows_over_a_users_quota_are_refused_before_anything_is_written() -> None:
    svc = ServiceProcess(limits={"user_rows": 400}).start()
    try:
        big = users_repo(svc, "big", 3, 200)
        before = counts(svc)
        assert_error_line(as_nobody(svc.query_socket, "record", str(big)),
                          "past 400 index rows (limits.user_rows)", "nothing was recorded")
        assert counts(svc) == before
        small = users_repo(svc, "small", 1, 20)
        assert as_nobody(svc.query_socket, "record", str(small)).returncode == 0
    finally:
        svc.close()


def test_a_record_is_stopped_at_its_time_bound() -> None:
    svc = ServiceProcess(limits={"record_seconds": 0.2}).start()
    try:
        path = users_repo(svc, "slow", 60, 300)  # about a second of git work
        before = counts(svc)
        assert_error_line(as_root(svc, "record", str(path)), "'record' was stopped after 0.2 s",
                          "limits.record_seconds")
        assert counts(svc) == before
        assert as_root(svc, "status").returncode == 0
    finally:
        svc.close()


def test_a_user_has_a_few_requests_at_once_and_each_is_bounded_in_time() -> None:
    """In process, with a status that waits until released: the bound is the admission's."""

    async def scenario() -> None:
        release = asyncio.Event()
        cancelled: list[bool] = []

        async def slow_status() -> Any:
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            return {"ok": True}

        limits = Limits(query_seconds=0.5, user_requests=1)
        services = Services(None, None, slow_status, limits, Admission(limits.user_requests))  # type: ignore[arg-type]
        nobody = Caller(NOBODY.pw_uid)
        first = asyncio.create_task(call(services, nobody, "status", {}))
        await asyncio.sleep(0)  # let it enter
        with pytest.raises(ServiceUnavailable, match="already has 1 requests running"):
            await call(services, nobody, "status", {})
        root = asyncio.create_task(call(services, Caller(0), "status", {}))  # root is not counted
        await asyncio.sleep(0)
        release.set()
        assert await first == {"ok": True} and await root == {"ok": True}
        release.clear()
        with pytest.raises(ServiceUnavailable, match=r"stopped after 0.5 s \(limits.query_seconds\)"):
            await call(services, nobody, "status", {})
        assert cancelled == [True]  # the work itself was stopped, not just left behind
        release.set()
        assert await call(services, nobody, "status", {}) == {"ok": True}  # the slot was given back

    asyncio.run(scenario())


def test_a_flat_folder_of_directories_is_recorded_in_linear_work(tmp_path: Path) -> None:
    """A folder of 2,000 directories: each tree is parsed a bounded number of times (round one
    parsed the folder once per directory below it: 2,000 times, quadratic in bytes)."""
    path = tmp_path / "flat"
    branchy(path, 1, 2000, folder="flat")
    repo = GitRepository(str(path))
    forms = revision_forms(repo, "main")
    trees = new_trees(repo, forms, set())
    assert len(trees) >= 2000
    assert repo.trees.listings_parsed <= 2 * 2002


def test_a_disk_floor_keeps_room_for_builds(nix: Nix, system: str, tmp_path: Path) -> None:
    st = os.statvfs("/tmp")
    floor = (st.f_bavail * st.f_frsize >> 20) + 1  # more than is free: every record is refused
    svc = ServiceProcess(limits={"min_free_mb": floor}).start()
    try:
        repo = tmp_path / "repo"
        branchy(repo, 1, 3)
        assert_error_line(as_root(svc, "record", str(repo)),
                          "MiB (limits.min_free_mb) are kept for recording builds")
        drv = write_drv(nix, tmp_path, system)
        assert run_hook(svc.hook_env(), drv).returncode == 0
        wait_for(lambda: any(e["drvPath"] == drv and e["state"] == "indexed" for e in svc.events()),
                 what="the build recorded below the floor")
    finally:
        svc.close()


def write_drv(nix: Nix, directory: Path, system: str) -> str:
    path = directory / "one.nix"
    path.write_text(f'derivation {{ name = "one"; system = "{system}"; builder = "/bin/sh";'
                    f' salt = "{salt()}"; }}')
    (drv,) = nix.instantiate(path)
    return drv


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB file system of its own (tmpfs), unmounted at the end."""
    mount = Path(f"/tmp/brfs{os.getpid()}")
    mount.mkdir(exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the disk-full test (run as root): "
                    f"{proc.stderr.decode()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def test_a_full_disk_is_said_as_such_and_builds_still_commit(nix: Nix, system: str, tmp_path: Path,
                                                             small_fs: Path) -> None:
    svc = ServiceProcess(base=small_fs / "svc", limits={"min_free_mb": 0}).start()
    try:
        filler = small_fs / "filler"
        with filler.open("wb") as f:  # leave about 400 KiB
            st = os.statvfs(small_fs)
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - (400 << 10)))
        repo = tmp_path / "repo"
        branchy(repo, 4, 2000)
        proc = as_root(svc, "record", str(repo))
        assert_error_line(proc, "the index could not", "database or disk is full")
        assert "rollback" not in proc.stderr.decode()
        filler.unlink()
        drv = write_drv(nix, tmp_path, system)
        assert run_hook(svc.hook_env(), drv).returncode == 0
        wait_for(lambda: any(e["drvPath"] == drv and e["state"] == "indexed" for e in svc.events()),
                 what="the build recorded after the disk filled")
        assert as_root(svc, "status").returncode == 0
    finally:
        svc.close()
