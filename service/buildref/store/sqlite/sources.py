"""Repositories, their ref history, recorded revisions and the forms of their directories
(content-addressed), and flake.lock pins in SQLite."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

import aiosqlite

from buildref.models import LockedInput, RefChange, RefMove
from buildref.store.api import (
    LockRecord,
    RepositoryInfo,
    RepositoryRecord,
    RevisionInfo,
    RevisionRecord,
    SourceUsage,
    TreeRecord,
)
from buildref.store.rows import REVISION, TREE, tree
from buildref.store.sqlite.database import Database, made_in, many, rows, rows_in

_REPOSITORY = "id, name, path, url, recorded_by"


class SqliteSourceIndex:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record_revisions(self, repo: RepositoryRecord, revisions: Sequence[RevisionRecord],
                               forms: Collection[bytes], trees: Sequence[TreeRecord],
                               moves: Sequence[RefChange]) -> None:
        now = time.time()
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO repositories (name, path, url, recorded_by) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET path = excluded.path, url = excluded.url,"
                " recorded_by = excluded.recorded_by",
                (repo.name, repo.path, repo.url, repo.recorded_by))
            repo_id = (await rows(conn, "SELECT id FROM repositories WHERE name = ?", (repo.name,)))[0][0]
            await many(conn,
                "INSERT INTO revisions (repo_id, rev, commit_time, root_export_ignore, root_raw)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (repo_id, rev) DO UPDATE SET"
                " root_export_ignore = excluded.root_export_ignore, root_raw = excluded.root_raw",
                [(repo_id, r.rev, r.commit_time, r.root_export_ignore, r.root_raw) for r in revisions])
            await many(conn,
                "INSERT INTO trees (form, raw, nar_hash, nar_size, files, identifying) VALUES (?, ?,"
                " ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [(t.form, t.raw, t.nar_hash, t.nar_size, t.files, int(t.identifying)) for t in trees])
            await many(conn, "INSERT INTO repo_trees (form, repo_id) VALUES (?, ?)"
                                   " ON CONFLICT DO NOTHING", [(form, repo_id) for form in forms])
            # only the revisions this pass names, however long the repository's history
            rev_ids = dict(await rows_in(
                conn, "SELECT rev, id FROM revisions WHERE repo_id = ? AND rev IN ({marks})",
                {m.rev for m in moves if m.rev}, [repo_id]))
            await many(conn,
                "INSERT INTO ref_moves (repo_id, ref, rev_id, seen_at) VALUES (?, ?, ?, ?)",
                [(repo_id, m.ref, rev_ids[m.rev] if m.rev else None, now) for m in moves])

    async def replace_lock(self, lock_file: str, inputs: Sequence[LockRecord]) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("DELETE FROM locked_inputs WHERE lock_file = ?", (lock_file,))
            await many(conn,
                "INSERT INTO locked_inputs (lock_file, input, type, location, ref, rev, nar_hash, store_path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(lock_file, i.input, i.type, i.location, i.ref, i.rev, i.nar_hash, i.store_path)
                 for i in inputs])


class SqliteSourceQueries:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def repository(self, name: str) -> RepositoryInfo | None:
        found = await rows(self._conn, f"SELECT {_REPOSITORY} FROM repositories WHERE name = ?", (name,))
        return RepositoryInfo(*found[0]) if found else None

    async def repositories(self) -> list[RepositoryInfo]:
        found = await rows(self._conn, f"SELECT {_REPOSITORY} FROM repositories ORDER BY id")
        return [RepositoryInfo(*row) for row in found]

    async def usage(self, recorded_by: str) -> SourceUsage:
        (count, rows_), = await rows(
            self._conn,
            "SELECT count(*), coalesce(sum((SELECT count(*) FROM revisions WHERE repo_id = r.id)"
            " + (SELECT count(*) FROM ref_moves WHERE repo_id = r.id)"
            " + (SELECT count(*) FROM repo_trees WHERE repo_id = r.id)), 0)"
            " FROM repositories r WHERE r.recorded_by = ?", (recorded_by,))
        return SourceUsage(count, rows_)

    async def current_refs(self, repo_id: int) -> dict[str, str | None]:
        return dict(await rows(
            self._conn,
            "SELECT m.ref, v.rev FROM ref_moves m LEFT JOIN revisions v ON v.id = m.rev_id"
            " WHERE m.id IN (SELECT max(id) FROM ref_moves WHERE repo_id = ? GROUP BY ref)", (repo_id,)))

    async def revisions(self, repo_id: int, revs: Collection[str]) -> dict[str, RevisionInfo]:
        found = await rows_in(self._conn, f"SELECT {REVISION} FROM revisions"
                                          " WHERE repo_id = ? AND rev IN ({marks})", revs, [repo_id])
        return {row[2]: RevisionInfo(*row) for row in found}

    async def revisions_with_roots(self, forms: Collection[bytes]) -> list[RevisionInfo]:
        found: dict[int, RevisionInfo] = {}
        for column in ("root_export_ignore", "root_raw"):  # fixed names, never input
            sql = f"SELECT {REVISION} FROM revisions WHERE {column} IN ({{marks}})"
            for row in await rows_in(self._conn, sql, forms):
                found[row[0]] = RevisionInfo(*row)
        return [found[i] for i in sorted(found)]

    async def ref_target(self, repo_id: int, names: Sequence[str], at: float) -> tuple[str, str] | None:
        for name in names:
            found = await rows(
                self._conn,
                "SELECT v.rev FROM ref_moves m LEFT JOIN revisions v ON v.id = m.rev_id"
                " WHERE m.repo_id = ? AND m.ref = ? AND m.seen_at <= ? ORDER BY m.seen_at DESC, m.id DESC"
                " LIMIT 1", (repo_id, name, at))
            if found and found[0][0] is not None:
                return name, found[0][0]
        return None

    async def revs_with_prefix(self, repo_id: int, prefix: str) -> list[str]:
        found = await rows(self._conn, "SELECT rev FROM revisions WHERE repo_id = ? AND rev >= ? AND rev < ?",
                           (repo_id, prefix, prefix + "g"))
        return [rev for (rev,) in found]

    async def trees(self, forms: Collection[bytes]) -> dict[bytes, TreeRecord]:
        sql = f"SELECT {TREE} FROM trees WHERE form IN ({{marks}})"
        found = await made_in(self._conn, sql, forms, tree)
        return {t.form: t for t in found}

    async def trees_with_hash(self, nar_hash: str) -> list[TreeRecord]:
        return [tree(row) for row in await rows(self._conn, f"SELECT {TREE} FROM trees WHERE nar_hash = ?",
                                                 (nar_hash,))]

    async def repository_forms(self, repo_id: int) -> list[bytes]:
        return [form for (form,) in await rows(self._conn, "SELECT form FROM repo_trees WHERE repo_id = ?",
                                               (repo_id,))]

    async def refs_at(self, repo_id: int, rev: str, at: float | None) -> list[str]:
        # Only refs that ever pointed at the revision can point at it now; each is checked by its
        # latest move up to ``at`` (both by index, whatever the length of the history).
        found = await rows(
            self._conn,
            "SELECT c.ref FROM (SELECT DISTINCT m.ref, m.rev_id FROM ref_moves m JOIN revisions v ON"
            " v.id = m.rev_id"
            " WHERE v.repo_id = ? AND v.rev = ?) c"
            " WHERE (SELECT m.rev_id FROM ref_moves m WHERE m.repo_id = ? AND m.ref = c.ref"
            " AND m.seen_at <= ? ORDER BY m.seen_at DESC, m.id DESC LIMIT 1) = c.rev_id",
            (repo_id, rev, repo_id, at if at is not None else float("inf")))
        return sorted(ref for (ref,) in found)

    async def locked_inputs(self, paths: Collection[str], hashes: Collection[str]) -> list[LockedInput]:
        found: dict[tuple[str, str], LockedInput] = {}
        for column, values in (("store_path", paths), ("nar_hash", hashes)):
            for p, h, location, kind, ref, rev, lock, name in await rows_in(
                    self._conn,
                    "SELECT store_path, nar_hash, location, type, ref, rev, lock_file, input"
                    f" FROM locked_inputs WHERE {column} IN ({{marks}})", values):  # a fixed name
                found[(lock, name)] = LockedInput(p, h, location, kind, ref, rev, lock, name)
        return [found[k] for k in sorted(found)]

    async def ref_history(self, repo_id: int) -> list[RefMove]:
        found = await rows(
            self._conn,
            "SELECT m.ref, v.rev, m.seen_at FROM ref_moves m LEFT JOIN revisions v ON v.id = m.rev_id"
            " WHERE m.repo_id = ? ORDER BY m.ref, m.id", (repo_id,))
        return [RefMove(ref, rev, seen) for ref, rev, seen in found]
