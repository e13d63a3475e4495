"""The storage contract: what every backend behind ``buildref.store.api`` must do, run against each
backend: SQLite, and a fleet's store (its inbox in local SQLite, its index in a real PostgreSQL
server started for the session). In-process, no Nix: records in, models out. The only SQL in the
tests lives here, in the backends' helpers below."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from buildref.errors import BadConfig, StorageError
from buildref.models import EventState, RefChange
from buildref.store.api import (
    BuildRecord,
    ContentRecord,
    ContentState,
    DerivationRecord,
    LockRecord,
    NewEvent,
    Realised,
    RepositoryRecord,
    RevisionRecord,
    Store,
    TreeRecord,
    UploadCounts,
    UploadItem,
)
from buildref.store.fleet import FleetStore
from buildref.store.sqlite import SqliteStore
from buildref.store.sqlite.schema import MIGRATIONS
from pgserver import PostgresServer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
S = "/nix/store/"
T = TypeVar("T")
B = "builder-1"


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

    async def write_through(self, reader: Any) -> None:
        """Try to write through a reader's connection; must raise."""
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await reader.builds._conn.execute("DELETE FROM events")


class PostgresBackend:
    """A fleet's store: the inbox in local SQLite, builds and sources in a fresh PostgreSQL database."""

    name = "postgres"

    def __init__(self, directory: Path, server: PostgresServer) -> None:
        self.inbox = directory / "inbox.db"
        self.url = server.create_database()

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Store]:
        store = await FleetStore.open(self.url, str(self.inbox), B)
        try:
            yield store
        finally:
            await store.close()

    @contextlib.asynccontextmanager
    async def uncommitted_derivation(self, store: Store, path: str) -> AsyncIterator[None]:
        """Another writer's transaction, left open for the block, that has inserted a derivation."""
        async with store.reading() as r:
            await r.builds.known_modulo([])  # the schema is made at first use
        conn = await asyncpg.connect(self.url)
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO derivations (path, name, system, modulo, first_seen)"
                                   " VALUES ($1, 'x', 'x', 'regular:out=00', 0)", path)
                yield
        finally:
            await conn.close()

    async def write_through(self, reader: Any) -> None:
        with pytest.raises(StorageError, match="read-only transaction"):
            await reader.builds._conn.fetch("DELETE FROM derivations")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # the local inbox
            await (await reader.events._snapshot())._conn.execute("DELETE FROM events")


Backend = SqliteBackend | PostgresBackend


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path)
    return PostgresBackend(tmp_path, request.getfixturevalue("pg_server"))


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
async def test_events_are_kept_once_and_change_state(backend: Backend) -> None:
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
            oldest = await reader.events.oldest_pending()
            assert oldest is not None and abs(oldest - time.time()) < 60
            keyed = await reader.events.by_keys([(events[2].drv, 2.0), (events[2].drv, 3.0), ("nope", 1.0)])
            assert [(e.drv_path, e.t, e.state) for e in keyed] == [(events[2].drv, 2.0, EventState.PENDING)]
            assert len(await reader.events.newest(None, 2)) == 2


@run
async def test_builds_closure_and_matching(backend: Backend) -> None:
    src = f"{S}{'s' * 32}-source"
    lib = drv("lib", srcs=(src,))
    fetched = drv("fetched", fixed=("recursive", "sha256-AAAA"))
    app = drv("app", inputs=((lib.path, "out"), (fetched.path, "out")))
    top = drv("top", inputs=((app.path, "out dev"),),
              outputs=(("dev", None), ("out", f"{S}{'t' * 32}-top")))
    async with backend.open() as store:
        e1 = await add_event(store, app.path, 100.0)
        app_out = (("out", app.outputs[0][1] or ""),)
        await store.builds.record([BuildRecord(e1, app.path, 100.0, app_out, (lib, fetched, app), builder=B)])
        e2 = await add_event(store, top.path, 200.0)
        dev = f"{S}{'d' * 32}-top-dev"
        await store.builds.record([BuildRecord(e2, top.path, 200.0, (("dev", dev),), (top,),
                                               (Realised(top.path, "dev", dev),), builder="builder-2")])
        async with store.reading() as r:
            assert await r.builds.known_modulo([lib.path, top.path, f"{S}x.drv"]) == {
                lib.path: "regular:out=lib", top.path: "regular:out=top"}
            info = await r.builds.derivation(top.path)
            assert info is not None and info.outputs == {"dev": dev, "out": f"{S}{'t' * 32}-top"}
            assert info.input_drvs == {app.path: ("out", "dev")}
            assert [(b.outputs, b.builder) for b in info.builds] == [({"dev": dev}, "builder-2")]
            fixed = await r.builds.derivation(fetched.path)
            assert fixed is not None and fixed.fixed is not None and fixed.fixed.hash == "sha256-AAAA"
            assert await r.builds.derivation(f"{S}nothing.drv") is None
            producer = await r.builds.producer(dev)
            assert producer is not None and (producer.drv_path, producer.output, producer.built_at,
                                             producer.builder) == (top.path, "dev", 200.0, "builder-2")
            closure = await r.builds.closure(producer.drv_id)
            assert [(c.path, c.distance, c.fixed_hash) for c in closure] == [
                (fixed.outputs["out"], 2, "sha256-AAAA"), (src, 2, None)]
            users = await r.builds.derivations_using([src], ["sha256-AAAA"], 64)
            newest = {b.build.drv_path: (users[b.drv_id], b.build.builder)
                      for b in await r.builds.newest_builds(list(users))}
            # lib and fetched were never built themselves
            assert newest == {app.path: (1, B), top.path: (2, "builder-2")}
            assert list((await r.builds.derivations_using([src], [], 0)).values()) == [0]  # lib alone
            assert [b.drv_path for b in await r.builds.recent(150.0, 10)] == [top.path]
            assert [(b.drv_path, b.builder) for b in await r.builds.recent(0.0, 10)] == [
                (top.path, "builder-2"), (app.path, B)]
            counts = await r.builds.table_counts()
            assert (counts.derivations, counts.outputs, counts.builds) == (4, 5, 2)
            assert (await r.events.counts()).indexed == 2


@run
async def test_builds_are_recorded_in_batches(backend: Backend) -> None:
    """Many builds in one transaction (a backlog, a benchmark's load), each with its own event;
    a derivation new to several of them is one derivation."""
    shared = drv("shared")
    tops = [drv(f"top{i}", inputs=((shared.path, "out"),)) for i in range(50)]
    async with backend.open() as store:
        await store.events.append([NewEvent(t.path, (), 1.0, "socket") for t in tops])
        ids = {e.drv: e.id for e in await store.events.pending(100)}
        await store.builds.record([BuildRecord(ids[t.path], t.path, 1.0, (("out", t.path[:-4]),), (shared, t),
                                               builder=B) for t in tops])
        async with store.reading() as r:
            assert (await r.builds.table_counts()).derivations == 51
            assert (await r.events.counts()).indexed == 50
            shared_info = await r.builds.derivation(shared.path)
            assert shared_info is not None and shared_info.builds == ()


@run
async def test_refs_revisions_trees_and_locks(backend: Backend) -> None:
    repo = RepositoryRecord("app", "/srv/app", None, "config")
    root_ei, root_raw, sub = b"\x01" * 20, b"\x02" * 20, b"\x03" * 20
    trees = [TreeRecord(root_ei, root_raw, "sha256-ROOT", 100, 3, True),
             TreeRecord(sub, None, "sha256-SUB", 40, 2, True)]
    v1, v2 = "1" * 40, "2" * 40
    async with backend.open() as store:
        moves = [RefChange("refs/heads/main", v1), RefChange("refs/tags/v1", v1)]
        await store.sources.record_revisions(repo, [RevisionRecord(v1, 10, root_ei, root_raw)],
                                             {root_ei, root_raw, sub}, trees, moves)
        async with store.reading() as r:
            info = await r.sources.repository("app")
            assert info is not None and (info.path, info.recorded_by) == ("/srv/app", "config")
            assert await r.sources.repository("other") is None
            assert await r.sources.current_refs(info.id) == {"refs/heads/main": v1, "refs/tags/v1": v1}
            middle = (await r.sources.ref_history(info.id))[0].seen_at
        await asyncio.sleep(0.01)  # the next moves must be seen at a later time than `middle`
        moves = [RefChange("refs/heads/main", v2), RefChange("refs/tags/v1", None)]
        # a tree recorded again (another revision, another repository) is kept once
        v2_record = RevisionRecord(v2, 20, sub, sub)
        await store.sources.record_revisions(repo, [v2_record], {sub}, trees[1:], moves)
        await store.sources.record_revisions(RepositoryRecord("/home/u/copy", "/home/u/copy", None, "1000"),
                                             [RevisionRecord(v2, 20, sub, sub)], {sub}, trees[1:], [])
        await store.sources.replace_lock("/srv/flake.lock", [
            LockRecord("dep", "git", "file:///dep", None, v1, "sha256-SUB", "/nix/store/x-source")])
        await store.sources.replace_lock("/srv/flake.lock", [
            LockRecord("dep", "github", "o/r", "main", v2, "sha256-ROOT", "/nix/store/y-source")])
        async with store.reading() as r:
            assert await r.sources.current_refs(info.id) == {"refs/heads/main": v2, "refs/tags/v1": None}
            assert await r.sources.ref_target(info.id, ["refs/heads/main"], middle) == ("refs/heads/main", v1)
            assert await r.sources.ref_target(info.id, ["refs/tags/v1", "refs/heads/main"], 1e12) == (
                "refs/heads/main", v2)
            assert await r.sources.revs_with_prefix(info.id, "1111") == [v1]
            revisions = await r.sources.revisions(info.id, [v1, v2, "3" * 40])
            assert {rev: (x.root_export_ignore, x.root_raw) for rev, x in revisions.items()} == {
                v1: (root_ei, root_raw), v2: (sub, sub)}
            with_root = await r.sources.revisions_with_roots([root_raw])
            assert {(x.repo_id, x.rev) for x in with_root} == {(info.id, v1)}
            assert len(await r.sources.revisions_with_roots([sub])) == 2  # both repositories
            assert await r.sources.trees([root_ei, sub, b"\x09" * 20]) == {root_ei: trees[0], sub: trees[1]}
            assert await r.sources.trees_with_hash("sha256-SUB") == [trees[1]]
            assert sorted(await r.sources.repository_forms(info.id)) == sorted([root_ei, root_raw, sub])
            assert await r.sources.refs_at(info.id, v1, middle) == ["refs/heads/main", "refs/tags/v1"]
            assert await r.sources.refs_at(info.id, v1, None) == []
            assert await r.sources.refs_at(info.id, v2, None) == ["refs/heads/main"]
            history = await r.sources.ref_history(info.id)
            assert [(m.ref, m.rev) for m in history] == [
                ("refs/heads/main", v1), ("refs/heads/main", v2),
                ("refs/tags/v1", v1), ("refs/tags/v1", None)]
            assert [x.recorded_by for x in await r.sources.repositories()] == ["config", "1000"]
            pins = await r.sources.locked_inputs(["/nix/store/x-source", "/nix/store/y-source"], [])
            assert [(p.input, p.type, p.rev, p.ref) for p in pins] == [("dep", "github", v2, "main")]


@run
async def test_contents_are_learnt_and_joined(backend: Backend) -> None:
    """Sources a build used are queued to be learnt (once, and again when a path gone comes back);
    what is learnt joins them to derivations by form or NAR hash."""
    src, big, out = f"{S}{'s' * 32}-source", f"{S}{'g' * 32}-big", f"{S}{'f' * 32}-fetched"
    form = b"\x05" * 20
    user = drv("user", srcs=(src, big))
    fetched = drv("fetched", fixed=("recursive", "sha256-FETCH"), outputs=(("out", out),))
    async with backend.open() as store:
        event = await add_event(store, user.path, 1.0)
        build = BuildRecord(event, user.path, 1.0, (), (user, fetched), (), (src, big, out), B)
        await store.builds.record([build])
        assert sorted(await store.builds.pending_contents(10)) == sorted([src, big, out])
        await store.builds.record_contents([
            ContentRecord(src, ContentState.DONE, "sha256-SRC", 10, form, 2, True),
            ContentRecord(big, ContentState.LARGE, "sha256-BIG", 10 << 30),
            ContentRecord(out, ContentState.GONE)])
        assert await store.builds.pending_contents(10) == []
        async with store.reading() as r:
            assert (await r.builds.content_backlog()) == 0
            assert [c.path for c in await r.builds.contents_with_forms([form])] == [src]
            assert [c.path for c in await r.builds.contents_with_hashes(["sha256-BIG"])] == [big]
            known = await r.builds.contents([src, out, f"{S}none"])
            assert (known[src].form, known[out].state) == (form, ContentState.GONE)
            used = await r.builds.derivations_using([src], [], 0)
            assert len(used) == 1
            by_fixed = await r.builds.derivations_using([], ["sha256-FETCH"], 0)
            by_output = await r.builds.derivations_using([out], [], 0)
            assert by_fixed == by_output and len(by_fixed) == 1
            closure = await r.builds.closure(next(iter(used)))
            assert [(c.path, c.distance, c.fixed_hash) for c in closure] == [(big, 0, None), (src, 0, None)]
        # the fixed output is built now: its path, gone when it was looked at, is learnt again
        event = await add_event(store, fetched.path, 2.0)
        await store.builds.record([BuildRecord(event, fetched.path, 2.0, (("out", out),), (), (), (out,), B)])
        assert await store.builds.pending_contents(10) == [out]


@run
async def test_partial_match_facts(backend: Backend) -> None:
    """What partial matches are found by: a learnt content's subdirectories and sampled files (both
    ways, replaced when learnt again), a flat fixed output naming one file of a revision (in the
    closure, by revision), derivations by id, and what one recorder's repositories take."""
    src, vendored = f"{S}{'s' * 32}-source", f"{S}{'v' * 32}-vendored"
    sub, blob1, blob2 = b"\x0a" * 20, b"\x0b" * 20, b"\x0c" * 20
    rev = "4" * 40
    raw = DerivationRecord(
        path=f"{S}{'r' * 32}-raw.drv", name="raw", system="x86_64-linux", fixed_mode="flat",
        fixed_hash="sha256-FILE", modulo="fixed:out:sha256:00", outputs=(("out", f"{S}{'r' * 32}-raw"),),
        input_drvs=(), input_srcs=(), rev_hint=rev, path_hint="docs/a.txt")
    user = drv("user", inputs=((raw.path, "out"),), srcs=(src, vendored))
    async with backend.open() as store:
        event = await add_event(store, user.path, 1.0)
        await store.builds.record([BuildRecord(event, user.path, 1.0, (), (raw, user), (), (src, vendored),
                                               B)])
        await store.builds.record_contents([
            ContentRecord(src, ContentState.DONE, "sha256-SRC", 10, b"\x01" * 20, 3, True,
                          dirs=(("lib", sub),), samples=(("a", blob1), ("b", blob2))),
            ContentRecord(vendored, ContentState.DONE, "sha256-VEN", 10, b"\x02" * 20, 2, True,
                          dirs=(("third_party/x", sub),), samples=(("c", blob2),))])
        async with store.reading() as r:
            assert sorted(await r.builds.contents_with_dirs([sub])) == [
                (src, "lib", sub), (vendored, "third_party/x", sub)]
            assert await r.builds.dirs_of([src]) == {src: [("lib", sub)]}
            sampled = await r.builds.contents_sampled([blob1])
            assert {p: sorted(v) for p, v in sampled.items()} == {src: [("a", blob1), ("b", blob2)]}
            assert set(await r.builds.contents_sampled([blob2])) == {src, vendored}
            assert await r.builds.samples_of([vendored]) == {vendored: [("c", blob2)]}
            [flat] = await r.builds.flat_fixed(rev)
            assert (flat.fixed_hash, flat.rev, flat.path, flat.output) == (
                "sha256-FILE", rev, "docs/a.txt", f"{S}{'r' * 32}-raw")
            assert await r.builds.flat_fixed("5" * 40) == []
            used = await r.builds.derivations_using([], [], 64, [flat.drv_id])
            top = next(i for i, d in used.items() if d == 1)
            closure = await r.builds.closure(top)
            assert [(c.path, c.fixed_hash, c.rev_hint, c.path_hint) for c in closure if c.path_hint] == [
                (f"{S}{'r' * 32}-raw", "sha256-FILE", rev, "docs/a.txt")]
        # learnt again: what it holds now replaces what it held
        await store.builds.record_contents([ContentRecord(src, ContentState.DONE, "sha256-SRC", 10,
                                                          b"\x01" * 20, 3, True, samples=(("a", blob1),))])
        await store.sources.record_revisions(RepositoryRecord("/home/u/r", "/home/u/r", None, "1000"),
                                             [RevisionRecord(rev, 1, sub, sub)], {sub, blob1},
                                             [TreeRecord(sub, None, "sha256-SUB", 1, 1, True)],
                                             [RefChange("refs/heads/main", rev)])
        async with store.reading() as r:
            assert await r.builds.dirs_of([src]) == {}
            assert await r.builds.samples_of([src]) == {src: [("a", blob1)]}
            usage = await r.sources.usage("1000")
            assert (usage.repositories, usage.rows) == (1, 1 + 1 + 2)  # a revision, a move, two forms
            assert (await r.sources.usage("config")).repositories == 0


@run
async def test_a_reader_never_sees_uncommitted_or_rolled_back_writes(backend: Backend) -> None:
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
        await store.builds.record([BuildRecord(event, committed.path, 1.0, (), (committed,), builder=B)])
        async with store.reading() as r:
            assert committed.path in await r.builds.known_modulo([committed.path])


@run
async def test_readers_do_not_write(backend: Backend) -> None:
    async with backend.open() as store, store.reading() as r:
        await backend.write_through(r)


@run
async def test_the_upload_queue_keeps_each_path_once_and_its_state(backend: Backend) -> None:
    """This machine's upload queue (local in a fleet too): a path queued twice is one; due paths
    oldest first; a failed batch's paths pending again, a path failed alone counted as failed and
    due later; copied and dropped paths never due again, and a dropped path queued anew is back."""
    one, two, three = (f"{S}{c * 32}-up" for c in "abc")
    async with backend.open() as store:
        q = store.uploads
        await q.enqueue([one, two], 100.0)
        await q.enqueue([two, three], 101.0)
        assert [i.path for i in await q.due(200.0, 10)] == [one, two, three]
        assert await q.due(50.0, 10) == [] and await q.next_due(50.0) == 50.0
        await q.failed({one: (1, 150.0), two: (1, 150.0)}, "error: batch", 120.0, alone=False)
        assert await q.counts() == UploadCounts(pending=3, done=0, failed=0, dropped=0)
        await q.failed({one: (2, 300.0)}, "error: alone", 160.0, alone=True)
        await q.done([three], 121.0)
        await q.dropped([two], 161.0)
        assert await q.counts() == UploadCounts(pending=0, done=1, failed=1, dropped=1)
        assert await q.due(200.0, 10) == [] and await q.next_due(200.0) == 100.0
        assert await q.due(300.0, 10) == [UploadItem(one, 2)]
        await q.enqueue([one, two, three], 400.0)  # queued again: only the dropped path comes back
        assert await q.counts() == UploadCounts(pending=1, done=1, failed=1, dropped=0)
        assert [i.path for i in await q.due(400.0, 10)] == [one, two]
    async with backend.open() as store:  # durable
        assert await store.uploads.counts() == UploadCounts(pending=1, done=1, failed=1, dropped=0)


@run
async def test_recording_a_build_again_is_one_build(backend: Backend) -> None:
    """A build shipped twice (a retry after a crash between the index's commit and the event's) is
    one build; the same derivation built by another builder, or later, is another; the newest wins."""
    one = drv("one")
    async with backend.open() as store:
        e1 = await add_event(store, one.path, 10.0)
        first = BuildRecord(e1, one.path, 10.0, (("out", one.path[:-4]),), (one,), (), (), "a")
        await store.builds.record([first])
        await store.builds.record([first])
        e2 = await add_event(store, one.path, 20.0)
        await store.builds.record([BuildRecord(e2, one.path, 20.0, (), (one,), (), (), "b")])
        async with store.reading() as r:
            recent = await r.builds.recent(0.0, 10)
            assert [(b.builder, b.built_at) for b in recent] == [("b", 20.0), ("a", 10.0)]
            info = await r.builds.derivation(one.path)
            assert info is not None and [(b.builder, b.outputs) for b in info.builds] == [
                ("b", {}), ("a", {"out": one.path[:-4]})]
            [newest] = await r.builds.newest_builds([await _drv_id(r, one.path)])
            assert (newest.build.builder, newest.build.built_at) == ("b", 20.0)
            assert (await r.builds.table_counts()).builds == 2
            assert (await r.events.counts()).indexed == 2
            assert await r.events.oldest_pending() is None


async def _drv_id(reader: Any, path: str) -> int:
    producer = await reader.builds.producer(path[:-4])
    assert producer is not None
    return int(producer.drv_id)


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
            # builds recorded before builders existed say so: no builder
            assert [b.builder for b in builds] == [None] * len(builds)
            # fields round one did not have: who built it, and which caches hold it (not asked here)
            added = {"builder", "caches", "cachesUnknown"}
            unchanged = [{k: v for k, v in b.to_json().items() if k not in added} for b in builds]
            assert unchanged == expected["builds"]
            info = await r.sources.repository("app")
            assert info is not None and info.recorded_by == "config"
            history = await r.sources.ref_history(info.id)
            assert [m.to_json() for m in history] == expected["refs"]
            # revisions stay; their forms, derived from git, are computed when the repository is
            # recorded again; every source of the indexed derivations is queued to be learnt
            v1 = expected["lookup_v1"]["rev"]
            assert (await r.sources.revisions(info.id, [v1]))[v1].root_raw is None
            assert await r.builds.content_backlog() > 0
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
