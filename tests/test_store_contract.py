"""The storage contract: what every backend behind ``buildref.store.api`` must do, run against each
backend (SQLite here; the fleet's PostgreSQL runs the same suite). In-process, no Nix: records in,
models out. The only SQL in the tests lives here, in the backends' helpers below."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from buildref.errors import BadConfig
from buildref.models import EventState, RefChange
from buildref.store.api import (
    BuildRecord,
    DerivationRecord,
    LockRecord,
    NewEvent,
    Realised,
    RepositoryRecord,
    RevisionRecord,
    SourceRecord,
    Store,
)
from buildref.store.sqlite import SqliteStore
from buildref.store.sqlite.schema import MIGRATIONS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
S = "/nix/store/"
T = TypeVar("T")


def run(test: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """An async test, run to completion on its own event loop."""
    @functools.wraps(test)
    def sync(*args: Any, **kwargs: Any) -> T:
        return asyncio.run(test(*args, **kwargs))  # type: ignore[arg-type]
    return sync


class SqliteBackend:
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.path = directory / "index.db"

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Store]:
        store = await SqliteStore.open(str(self.path))
        try:
            yield store
        finally:
            await store.close()

    @contextlib.asynccontextmanager
    async def uncommitted_derivation(self, store: Store, path: str) -> AsyncIterator[None]:
        """A write transaction, left open for the block, that has inserted a derivation at ``path``."""
        assert isinstance(store, SqliteStore)
        async with store._db.transaction() as conn:
            await conn.execute("INSERT INTO derivations (path, name, system, modulo, first_seen)"
                               " VALUES (?, 'x', 'x', 'regular:out=00', 0)", (path,))
            yield


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> SqliteBackend:
    return SqliteBackend(tmp_path)


def drv(name: str, inputs: tuple[tuple[str, str], ...] = (), srcs: tuple[str, ...] = (),
        fixed: tuple[str, str] | None = None, outputs: tuple[tuple[str, str | None], ...] | None = None
        ) -> DerivationRecord:
    digest = (name * 32)[:32]
    return DerivationRecord(
        path=f"{S}{digest}-{name}.drv", name=name, system="x86_64-linux",
        fixed_mode=fixed[0] if fixed else None, fixed_hash=fixed[1] if fixed else None,
        modulo=f"regular:out={name}", outputs=outputs or (("out", f"{S}{digest}-{name}"),),
        input_drvs=inputs, input_srcs=srcs)


async def add_event(store: Store, drv_path: str, t: float) -> int:
    await store.events.append([NewEvent(drv_path, (), t, "socket")])
    pending = await store.events.pending(1000)
    return next(e.id for e in pending if e.drv == drv_path and e.t == t)


@run
async def test_events_are_kept_once_and_change_state(backend: SqliteBackend) -> None:
    async with backend.open() as store:
        events = [NewEvent(f"{S}e{i}.drv", ("o",), float(i), "socket") for i in range(3)]
        await store.events.append(events)
        await store.events.append([events[1], NewEvent("garbage", (), 9.0, "spool", error="error: bad")])
        pending = await store.events.pending(10)
        assert [(e.drv, e.outs, e.t) for e in pending] == [(e.drv, e.outs, e.t) for e in events]
        await store.events.fail(pending[0].id, "error: broken")
        async with store.reading() as reader:
            counts = await reader.events.counts()
            assert (counts.received, counts.pending, counts.failed, counts.indexed) == (4, 2, 2, 0)
            last = await reader.events.last()
            assert last is not None and last.drv_path == "garbage" and last.source == "spool"
            failed = await reader.events.newest(EventState.FAILED, 10)
            assert [(e.drv_path, e.error) for e in failed] == [
                ("garbage", "error: bad"), (events[0].drv, "error: broken")]
            keyed = await reader.events.by_keys([(events[2].drv, 2.0), (events[2].drv, 3.0), ("nope", 1.0)])
            assert [(e.drv_path, e.t, e.state) for e in keyed] == [(events[2].drv, 2.0, EventState.PENDING)]
            assert len(await reader.events.newest(None, 2)) == 2


@run
async def test_builds_closure_and_matching(backend: SqliteBackend) -> None:
    src = f"{S}{'s' * 32}-source"
    lib = drv("lib", srcs=(src,))
    fetched = drv("fetched", fixed=("recursive", "sha256-AAAA"))
    app = drv("app", inputs=((lib.path, "out"), (fetched.path, "out")))
    top = drv("top", inputs=((app.path, "out dev"),),
              outputs=(("dev", None), ("out", f"{S}{'t' * 32}-top")))
    async with backend.open() as store:
        e1 = await add_event(store, app.path, 100.0)
        app_out = (("out", app.outputs[0][1] or ""),)
        await store.builds.record([BuildRecord(e1, app.path, 100.0, app_out, (lib, fetched, app))])
        e2 = await add_event(store, top.path, 200.0)
        dev = f"{S}{'d' * 32}-top-dev"
        await store.builds.record([BuildRecord(e2, top.path, 200.0, (("dev", dev),), (top,),
                                               (Realised(top.path, "dev", dev),))])
        async with store.reading() as r:
            assert await r.builds.known_modulo([lib.path, top.path, f"{S}x.drv"]) == {
                lib.path: "regular:out=lib", top.path: "regular:out=top"}
            info = await r.builds.derivation(top.path)
            assert info is not None and info.outputs == {"dev": dev, "out": f"{S}{'t' * 32}-top"}
            assert info.input_drvs == {app.path: ("out", "dev")}
            assert [b.outputs for b in info.builds] == [{"dev": dev}]
            fixed = await r.builds.derivation(fetched.path)
            assert fixed is not None and fixed.fixed is not None and fixed.fixed.hash == "sha256-AAAA"
            assert await r.builds.derivation(f"{S}nothing.drv") is None
            producer = await r.builds.producer(dev)
            assert producer is not None and (producer.drv_path, producer.output, producer.built_at) == (
                top.path, "dev", 200.0)
            paths, hashes = await r.builds.closure_inputs(producer.drv_id)
            assert (paths, hashes) == ([src], ["sha256-AAAA"])
            users = await r.builds.derivations_using([src], ["sha256-AAAA"], 64)
            newest = {b.build.drv_path: users[b.drv_id] for b in await r.builds.newest_builds(list(users))}
            assert newest == {app.path: 1, top.path: 2}  # lib and fetched were never built themselves
            assert list((await r.builds.derivations_using([src], [], 0)).values()) == [0]  # lib alone
            assert [b.drv_path for b in await r.builds.recent(150.0, 10)] == [top.path]
            assert [b.drv_path for b in await r.builds.recent(0.0, 10)] == [top.path, app.path]
            counts = await r.builds.table_counts()
            assert (counts.derivations, counts.outputs, counts.builds) == (4, 5, 2)
            assert (await r.events.counts()).indexed == 2


@run
async def test_builds_are_recorded_in_batches(backend: SqliteBackend) -> None:
    """Many builds in one transaction (a backlog, a benchmark's load), each with its own event;
    a derivation new to several of them is one derivation."""
    shared = drv("shared")
    tops = [drv(f"top{i}", inputs=((shared.path, "out"),)) for i in range(50)]
    async with backend.open() as store:
        await store.events.append([NewEvent(t.path, (), 1.0, "socket") for t in tops])
        ids = {e.drv: e.id for e in await store.events.pending(100)}
        await store.builds.record([BuildRecord(ids[t.path], t.path, 1.0, (("out", t.path[:-4]),), (shared, t))
                                   for t in tops])
        async with store.reading() as r:
            assert (await r.builds.table_counts()).derivations == 51
            assert (await r.events.counts()).indexed == 50
            shared_info = await r.builds.derivation(shared.path)
            assert shared_info is not None and shared_info.builds == ()


@run
async def test_refs_sources_and_locks(backend: SqliteBackend) -> None:
    repo = RepositoryRecord("app", "/srv/app", None)
    src = SourceRecord("", "export-ignore", "sha256-ROOT", f"{S}{'r' * 32}-source")
    sub = SourceRecord("sub", "raw", "sha256-SUB", f"{S}{'u' * 32}-sub")
    v1, v2 = "1" * 40, "2" * 40
    async with backend.open() as store:
        moves = [RefChange("refs/heads/main", v1), RefChange("refs/tags/v1", v1)]
        await store.sources.record_revisions(repo, [RevisionRecord(v1, 10, (src, sub))], moves)
        async with store.reading() as r:
            repo_id = await r.sources.repository_id("app")
            assert repo_id is not None and await r.sources.repository_id("other") is None
            assert await r.sources.current_refs(repo_id) == {"refs/heads/main": v1, "refs/tags/v1": v1}
            middle = (await r.sources.ref_history(repo_id))[0].seen_at
        await asyncio.sleep(0.01)  # the next moves must be seen at a later time than `middle`
        moves = [RefChange("refs/heads/main", v2), RefChange("refs/tags/v1", None)]
        await store.sources.record_revisions(repo, [RevisionRecord(v2, 20, ())], moves)
        await store.sources.replace_lock("/srv/flake.lock", [
            LockRecord("dep", "git", "file:///dep", None, v1, "sha256-SUB", sub.store_path)])
        await store.sources.replace_lock("/srv/flake.lock", [
            LockRecord("dep", "github", "o/r", "main", v2, "sha256-ROOT", src.store_path)])
        async with store.reading() as r:
            assert await r.sources.current_refs(repo_id) == {"refs/heads/main": v2, "refs/tags/v1": None}
            assert await r.sources.ref_target(repo_id, ["refs/heads/main"], middle) == ("refs/heads/main", v1)
            assert await r.sources.ref_target(repo_id, ["refs/tags/v1", "refs/heads/main"], 1e12) == (
                "refs/heads/main", v2)
            assert await r.sources.revs_with_prefix(repo_id, "1111") == [v1]
            assert await r.sources.revisions_with_sources(repo_id, [v1, v2]) == {v1}
            assert await r.sources.revision_sources(repo_id, v1) == [src, sub]
            found = await r.sources.recorded_sources([sub.store_path], ["sha256-ROOT"])
            assert sorted((f.store_path, f.rev, f.subdir, f.rule) for f in found) == sorted([
                (src.store_path, v1, "", "export-ignore"), (sub.store_path, v1, "sub", "raw")])
            rev_id = found[0].rev_id
            assert await r.sources.refs_at(rev_id, middle) == ["refs/heads/main", "refs/tags/v1"]
            assert await r.sources.refs_at(rev_id, None) == []
            history = await r.sources.ref_history(repo_id)
            assert [(m.ref, m.rev) for m in history] == [
                ("refs/heads/main", v1), ("refs/heads/main", v2),
                ("refs/tags/v1", v1), ("refs/tags/v1", None)]
            pins = await r.sources.locked_inputs([src.store_path, sub.store_path], [])
            assert [(p.input, p.type, p.rev, p.ref) for p in pins] == [("dep", "github", v2, "main")]


@run
async def test_a_reader_never_sees_uncommitted_or_rolled_back_writes(backend: SqliteBackend) -> None:
    """A reader asks while another task's write transaction is open: it neither waits for it nor
    sees its rows; once that transaction is rolled back, nobody ever does."""
    path = f"{S}{'u' * 32}-uncommitted.drv"

    class Rollback(Exception):
        pass

    async with backend.open() as store:
        with pytest.raises(Rollback):
            async with backend.uncommitted_derivation(store, path):
                async with asyncio.timeout(5):  # would hang if readers waited on the writer
                    async with store.reading() as r:
                        assert await r.builds.known_modulo([path]) == {}
                        assert (await r.builds.table_counts()).derivations == 0
                raise Rollback
        async with store.reading() as r:
            assert await r.builds.known_modulo([path]) == {}
        # and what is committed is seen by the next snapshot
        committed = drv("committed")
        event = await add_event(store, committed.path, 1.0)
        await store.builds.record([BuildRecord(event, committed.path, 1.0, (), (committed,))])
        async with store.reading() as r:
            assert committed.path in await r.builds.known_modulo([committed.path])


@run
async def test_readers_do_not_write(backend: SqliteBackend) -> None:
    async with backend.open() as store, store.reading() as r:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await r.builds._conn.execute("DELETE FROM events")  # type: ignore[attr-defined]


@run
async def test_round_one_database_is_upgraded_keeping_everything(tmp_path: Path) -> None:
    """A database written by round one's release (tests/fixtures/round1.db, made by its service
    with real builds, refs and a malformed event): opened by this version, every event, build and
    ref is still there, answered through the interfaces as round one answered them."""
    path = tmp_path / "round1.db"
    shutil.copy(FIXTURES / "round1.db", path)
    expected = json.loads((FIXTURES / "round1.json").read_text())
    store = await SqliteStore.open(str(path))
    try:
        async with store.reading() as r:
            counts = await r.events.counts()
            assert counts.to_json() == expected["status_events"]
            events = await r.events.newest(None, 100)
            oldest_first = [[e.drv_path, e.t, e.source, e.state.value, e.error] for e in reversed(events)]
            assert oldest_first == expected["events"]
            builds = await r.builds.recent(0.0, 100)
            assert [b.to_json() for b in builds] == expected["builds"]
            repo_id = await r.sources.repository_id("app")
            assert repo_id is not None
            history = await r.sources.ref_history(repo_id)
            assert [m.to_json() for m in history] == expected["refs"]
            v1 = expected["lookup_v1"]
            sources = await r.sources.revision_sources(repo_id, v1["rev"])
            assert {s.store_path for s in sources} == {s["storePath"] for s in v1["sources"]}
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    # opening it again runs nothing more
    store = await SqliteStore.open(str(path))
    await store.close()


@run
async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(BadConfig, match="newer than this buildref"):
        await SqliteStore.open(str(path))
