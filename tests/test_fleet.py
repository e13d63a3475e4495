"""A fleet: several services, each with its own builder name and local inbox, sharing one real
PostgreSQL index; builds through the real hook and Nix. What one builder records, every service
answers, with the builder; PostgreSQL going away loses and spools nothing."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from buildref.config import parse_config
from buildref.errors import BadConfig, StorageError
from buildref.store import redacted
from buildref.store.api import BuildRecord, DerivationRecord, NewEvent
from buildref.store.fleet import FleetStore
from buildsets import build_set, flake_repo, salt
from helpers import Nix, git, nix_string
from pgserver import PostgresServer
from servicectl import ServiceProcess, nix_build_json, run_hook, wait_for


def _lag(svc: ServiceProcess) -> dict[str, Any]:
    lag: dict[str, Any] = svc.call("status")["indexLag"]
    return lag


def test_two_builders_see_each_others_builds(nix: Nix, pg_server: PostgresServer, tmp_path: Path,
                                             system: str) -> None:
    url = pg_server.create_database()
    # a password in the URL (the server trusts the socket and ignores it) must never be shown
    with_password = url.replace("buildref@", "buildref:s3cret-pw@")
    repo = flake_repo(tmp_path, system)
    v1 = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1.0.0")
    ci1 = ServiceProcess(database=with_password, builder="ci-1",
                         repository=[{"name": "app", "path": str(repo)}])
    ci2 = ServiceProcess(database=url, builder="ci-2")
    try:
        ci1.start()
        ci2.start()
        built_app = nix_build_json(ci1.nix_env(nix.env), f"git+file://{repo}?rev={v1}")
        built_chain = nix_build_json(ci2.nix_env(nix.env), "-f", str(build_set(tmp_path, system)), "chain3")
        ci1.wait_idle()
        ci2.wait_idle()
        # ci-1 watches its repository: its refs reach the shared index, and ci-2 sees them
        wait_for(lambda: any(m["ref"] == "refs/tags/v1.0.0" for m in _refs(ci2)), what="ci-1's refs")

        # the deploy host's question, asked of the other builder
        found = ci2.call("lookup", {"repo": "app", "ref": "v1.0.0"})
        assert found["rev"] == v1
        assert [(b["drvPath"], b["builder"], b["outputs"]) for b in found["builds"]] == [
            (built_app[0]["drvPath"], "ci-1", built_app[0]["outputs"])]
        # (ci-2 answers from what is recorded: a path ci-1 recorded is on ci-1's machine)
        why = ci2.call("why", {"what": built_app[0]["outputs"]["out"]})
        assert (why["drvPath"], why["builder"]) == (built_app[0]["drvPath"], "ci-1")
        assert why["sources"] == []  # ci-1's checkout is not searched from ci-2's machine
        why = ci1.call("why", {"what": built_app[0]["outputs"]["out"]})
        assert why["builder"] == "ci-1" and why["sources"][0]["rev"] == v1

        # every service lists every builder's builds; each has only its own events
        expected = {str(b["drvPath"]): "ci-1" for b in built_app}
        chain = {str(e["drvPath"]) for e in ci2.events()}  # chain1..3 and multi, each by its hook
        assert len(chain) == 4 and str(built_chain[0]["drvPath"]) in chain
        expected |= dict.fromkeys(chain, "ci-2")
        for svc in (ci1, ci2):
            builds = {b["drvPath"]: b["builder"] for b in svc.call("builds", {"limit": 100})}
            assert builds == expected
        assert {e["drvPath"] for e in ci1.events()} == {str(b["drvPath"]) for b in built_app}
        shown = ci1.call("show", {"what": str(built_chain[0]["drvPath"])})
        assert [b["builder"] for b in shown["builds"]] == ["ci-2"]

        for svc, name in ((ci1, "ci-1"), (ci2, "ci-2")):
            status = svc.call("status")
            assert status["builder"] == name
            assert status["indexLag"] == {"events": 0, "seconds": 0.0, "reachable": True, "error": None}
            assert status["database"]["builds"] == 5 and status["database"]["bytes"] == -1
        status = ci1.call("status")
        assert status["database"]["path"] == url  # without its password
        assert "s3cret-pw" not in str(status) and "s3cret-pw" not in ci1.log_text()
    finally:
        ci1.close()
        ci2.close()


def _refs(svc: ServiceProcess) -> list[dict[str, Any]]:
    try:
        moves: list[dict[str, Any]] = svc.call("refs", {"repo": "app"})
    except AssertionError:  # not recorded yet
        return []
    return moves


def test_postgres_stopped_in_a_burst_loses_and_spools_nothing(nix: Nix, tmp_path: Path, system: str) -> None:
    """A burst of hook events (real hook processes, 8 at a time); PostgreSQL is stopped after the
    first 20 are acknowledged. Every hook is acknowledged at once and nothing is spooled; the
    service (and one started meanwhile) says how far behind the index is; once PostgreSQL is back
    every build is in the shared index, none failed."""
    n = 150
    expr = tmp_path / "burst.nix"
    expr.write_text(f"""builtins.genList (i: derivation {{
  name = "burst-${{toString i}}"; system = {nix_string(system)}; builder = "/bin/sh";
  args = [ "-c" "echo ${{toString i}} > $out" ]; salt = "{salt()}";
}}) {n}""")
    drvs = nix.instantiate(expr)
    assert len(set(drvs)) == n
    server = PostgresServer().start()
    url = server.create_database()
    svc = ServiceProcess(database=url, builder="b1")
    deploy = ServiceProcess(database=url, builder="deploy")
    try:
        svc.start()
        acked = 0
        lock = threading.Lock()
        twenty = threading.Event()
        durations: list[float] = []

        def hook(drv: str) -> bytes:
            nonlocal acked
            start = time.monotonic()
            proc = run_hook(svc.hook_env(), drv)
            assert proc.returncode == 0
            with lock:
                durations.append(time.monotonic() - start)
                acked += 1
                if acked >= 20:
                    twenty.set()
            return proc.stderr

        with ThreadPoolExecutor(8) as pool:
            results = [pool.submit(hook, drv) for drv in drvs]
            assert twenty.wait(60)
            server.stop()
            stopped_at = acked
            errors = [r.result() for r in results]
        assert stopped_at < n - 50, stopped_at  # most of the burst came while PostgreSQL was away
        assert errors == [b""] * n  # every hook acknowledged: nothing spooled, nothing said
        assert not svc.spool.exists() or not list(svc.spool.iterdir())
        assert max(durations) < 1.0  # the hook's own timeout: no ack waited on the network

        status = svc.call("status")
        assert status["events"]["received"] == n and status["events"]["failed"] == 0
        lag = status["indexLag"]
        assert lag["events"] > 0 and lag["seconds"] > 0 and lag["reachable"] is False
        assert lag["error"].startswith("error: the shared index is not available")
        assert status["database"]["builds"] == -1  # not known while away, not made up
        # a service starts, and answers status, with PostgreSQL away
        deploy.start()
        assert deploy.call("status")["indexLag"]["reachable"] is False

        server.start()
        wait_for(lambda: _lag(svc)["events"] == 0, timeout=60, what="the index to catch up")
        assert _lag(svc) == {"events": 0, "seconds": 0.0, "reachable": True, "error": None}
        counts = svc.call("status")["events"]
        assert counts == {"received": n, "indexed": n, "failed": 0, "pending": 0}
        # the other service reads every build from the shared index, once each
        builds = deploy.call("builds", {"limit": 1000})
        assert sorted(b["drvPath"] for b in builds) == sorted(drvs)
        assert {b["builder"] for b in builds} == {"b1"}
    finally:
        svc.close()
        deploy.close()
        server.close()


# -- the shared index in-process: many writers, migrations, URLs


def test_database_urls_never_show_a_password() -> None:
    assert redacted("postgresql://u:secret@db.example.org:5433/buildref") == (
        "postgresql://u@db.example.org:5433/buildref")
    assert redacted("postgresql:///buildref?host=/run/postgresql&password=secret&sslmode=require") == (
        "postgresql:///buildref?host=/run/postgresql&sslmode=require")
    assert redacted("postgres://u@h1:1,h2:2/db") == "postgres://u@h1:1,h2:2/db"
    assert redacted("sqlite:///var/lib/buildref/buildref.db") == "sqlite:///var/lib/buildref/buildref.db"
    with pytest.raises(BadConfig) as refused:
        parse_config({"database": "mysql://u:secret@x/y"})
    assert "secret" not in str(refused.value) and "mysql://u@x/y" in str(refused.value)
    parsed = parse_config({"database": "postgresql://u:secret@db/buildref", "state_dir": "/srv/b"})
    assert parsed.database.startswith("postgresql://") and parsed.inbox == "/srv/b/buildref.db"


def test_builder_names() -> None:
    assert parse_config({}).builder == socket.gethostname()
    assert parse_config({"builder": ""}).builder == socket.gethostname()  # as the NixOS module leaves it
    assert parse_config({"builder": "ci-1"}).builder == "ci-1"
    for bad in ("ci 1", "ci\n1", "x" * 256, 7):
        with pytest.raises(BadConfig, match="builder"):
            parse_config({"builder": bad})


def _chain(prefix: str, n: int) -> list[DerivationRecord]:
    """n derivations, each using the one before (a closure the writers share)."""
    drvs: list[DerivationRecord] = []
    for i in range(n):
        path = f"/nix/store/{prefix}{i:030d}"[:43] + f"-{prefix}{i}.drv"
        inputs = ((drvs[-1].path, "out"),) if drvs else ()
        drvs.append(DerivationRecord(path, f"{prefix}{i}", "x86_64-linux", None, None, f"regular:out={i}",
                                     (("out", path[:-4]),), inputs, (f"/nix/store/{'s' * 32}-src{i % 7}",)))
    return drvs


async def _write_concurrently(url: str, inbox: Path) -> None:
    shared = _chain("aa", 60)
    stores = [await FleetStore.open(url, str(inbox / f"inbox{w}.db"), f"w{w}") for w in range(6)]
    try:
        async def writer(w: int, store: FleetStore) -> None:
            order = shared if w % 2 else list(reversed(shared))  # opposite orders: deadlocks, if any
            for batch in range(0, 60, 6):
                drvs = order[batch:batch + 6]
                await store.events.append([NewEvent(d.path, (), float(batch), "socket") for d in drvs])
                ids = {e.drv: e.id for e in await store.events.pending(100)}
                await store.builds.record([BuildRecord(ids[d.path], d.path, float(batch), d.outputs,
                                                       tuple(shared), (), d.input_srcs, f"w{w}")
                                           for d in drvs])
        await asyncio.gather(*(writer(w, s) for w, s in enumerate(stores)))
        async with stores[0].reading() as r:
            counts = await r.builds.table_counts()
            assert (counts.derivations, counts.outputs, counts.builds) == (60, 60, 6 * 60)
            top = await r.builds.derivation(shared[-1].path)
            assert top is not None and sorted(b.builder for b in top.builds) == [f"w{w}" for w in range(6)]
            assert top.input_drvs == {shared[-2].path: ("out",)}
            # each source is learnt by one builder, whichever queued it first
            queued = [await s.builds.pending_contents(100) for s in stores]
            assert sorted(p for q in queued for p in q) == sorted({s for d in shared for s in d.input_srcs})
        for s in stores:
            async with s.reading() as r:
                assert (await r.events.counts()).indexed == 60
    finally:
        for s in stores:
            await s.close()


def test_many_writers_on_one_database(pg_server: PostgresServer, tmp_path: Path) -> None:
    """Six builders record overlapping closures at once, in opposite orders, on a new database
    (all migrating it at first use): every build once, every derivation once, nothing lost."""
    asyncio.run(_write_concurrently(pg_server.create_database(), tmp_path))


async def _newer_schema(url: str, inbox: Path) -> None:
    store = await FleetStore.open(url, str(inbox / "inbox.db"), "b")
    try:
        with pytest.raises(StorageError, match="newer than this buildref"):
            async with store.reading() as r:
                await r.builds.table_counts()
        async with store.reading() as r:  # and the inbox still answers
            assert (await r.events.counts()).received == 0
    finally:
        await store.close()


def test_a_newer_shared_schema_is_refused(pg_server: PostgresServer, tmp_path: Path) -> None:
    url = pg_server.create_database()
    name = pg_server.name_of(url)
    pg_server.psql("CREATE TABLE buildref_schema (version INTEGER PRIMARY KEY,"
                   " applied_at TIMESTAMPTZ NOT NULL DEFAULT now());"
                   " INSERT INTO buildref_schema VALUES (99)", name)
    asyncio.run(_newer_schema(url, tmp_path))
