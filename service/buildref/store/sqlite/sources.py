"""Repositories, their ref history, each recorded revision's source store paths, and flake.lock
pins in SQLite."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

import aiosqlite

from buildref.models import LockedInput, RefChange, RefMove
from buildref.store.api import LockRecord, RecordedSource, RepositoryRecord, RevisionRecord, SourceRecord
from buildref.store.sqlite.database import Database, rows, rows_in


class SqliteSourceIndex:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record_revisions(self, repo: RepositoryRecord, revisions: Sequence[RevisionRecord],
                               moves: Sequence[RefChange]) -> None:
        now = time.time()
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO repositories (name, path, url) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET path = excluded.path, url = excluded.url",
                (repo.name, repo.path, repo.url))
            repo_id = (await rows(conn, "SELECT id FROM repositories WHERE name = ?", (repo.name,)))[0][0]
            await conn.executemany(
                "INSERT INTO revisions (repo_id, rev, commit_time) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(repo_id, r.rev, r.commit_time) for r in revisions])
            # only the revisions this pass names, however long the repository's history
            rev_ids = dict(await rows_in(
                conn, "SELECT rev, id FROM revisions WHERE repo_id = ? AND rev IN ({marks})",
                {*(m.rev for m in moves if m.rev), *(r.rev for r in revisions)}, [repo_id]))
            await conn.executemany(
                "INSERT INTO sources (rev_id, subdir, rule, nar_hash, store_path) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [(rev_ids[r.rev], s.subdir, s.rule, s.nar_hash, s.store_path)
                 for r in revisions for s in r.sources])
            await conn.executemany(
                "INSERT INTO ref_moves (repo_id, ref, rev_id, seen_at) VALUES (?, ?, ?, ?)",
                [(repo_id, m.ref, rev_ids[m.rev] if m.rev else None, now) for m in moves])

    async def replace_lock(self, lock_file: str, inputs: Sequence[LockRecord]) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("DELETE FROM locked_inputs WHERE lock_file = ?", (lock_file,))
            await conn.executemany(
                "INSERT INTO locked_inputs (lock_file, input, type, location, ref, rev, nar_hash, store_path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(lock_file, i.input, i.type, i.location, i.ref, i.rev, i.nar_hash, i.store_path)
                 for i in inputs])


class SqliteSourceQueries:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def repository_id(self, name: str) -> int | None:
        found = await rows(self._conn, "SELECT id FROM repositories WHERE name = ?", (name,))
        return found[0][0] if found else None

    async def current_refs(self, repo_id: int) -> dict[str, str | None]:
        return dict(await rows(
            self._conn,
            "SELECT m.ref, v.rev FROM ref_moves m LEFT JOIN revisions v ON v.id = m.rev_id"
            " WHERE m.id IN (SELECT max(id) FROM ref_moves WHERE repo_id = ? GROUP BY ref)", (repo_id,)))

    async def revisions_with_sources(self, repo_id: int, revs: Collection[str]) -> set[str]:
        found = await rows_in(
            self._conn,
            "SELECT DISTINCT v.rev FROM revisions v JOIN sources s ON s.rev_id = v.id"
            " WHERE v.repo_id = ? AND v.rev IN ({marks})", revs, [repo_id])
        return {rev for (rev,) in found}

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

    async def revision_sources(self, repo_id: int, rev: str) -> list[SourceRecord]:
        found = await rows(
            self._conn,
            "SELECT s.subdir, s.rule, s.nar_hash, s.store_path FROM sources s"
            " JOIN revisions v ON v.id = s.rev_id WHERE v.repo_id = ? AND v.rev = ?"
            " ORDER BY s.rule, s.subdir", (repo_id, rev))
        return [SourceRecord(*row) for row in found]

    async def repository_derivations(self, repo_id: int, max_distance: int) -> dict[int, int]:
        found = await rows(
            self._conn,
            "WITH RECURSIVE users (drv_id, distance) AS ("
            " SELECT i.drv_id, 0 FROM src_inputs i JOIN sources s ON s.store_path = i.path"
            " JOIN revisions v ON v.id = s.rev_id WHERE v.repo_id = ?"
            " UNION SELECT d.id, 0 FROM derivations d JOIN sources s ON s.nar_hash = d.fixed_hash"
            " JOIN revisions v ON v.id = s.rev_id WHERE v.repo_id = ? AND d.fixed_mode = 'recursive'"
            " UNION SELECT e.drv_id, u.distance + 1 FROM drv_inputs e JOIN users u ON e.input_id = u.drv_id"
            " WHERE u.distance < ?)"
            " SELECT drv_id, min(distance) FROM users GROUP BY drv_id",
            (repo_id, repo_id, max_distance))
        return dict(found)

    async def recorded_sources(self, paths: Collection[str], hashes: Collection[str]) -> list[RecordedSource]:
        found: set[tuple[str, str, str, str, str, int, str]] = set()
        for column, values in (("store_path", paths), ("nar_hash", hashes)):
            for row in await rows_in(
                    self._conn,
                    "SELECT s.store_path, r.name, v.rev, s.subdir, s.rule, v.id, s.nar_hash FROM sources s"
                    " JOIN revisions v ON v.id = s.rev_id JOIN repositories r ON r.id = v.repo_id"
                    f" WHERE s.{column} IN ({{marks}})", values):  # column: a fixed name, never input
                found.add(tuple(row))
        return [RecordedSource(*row) for row in sorted(found)]

    async def refs_at(self, rev_id: int, at: float | None) -> list[str]:
        # Only refs that ever pointed at the revision can point at it now; each is checked by its
        # latest move up to ``at`` (both by index, whatever the length of the history).
        found = await rows(
            self._conn,
            "SELECT c.ref FROM (SELECT DISTINCT repo_id, ref FROM ref_moves WHERE rev_id = ?) c"
            " WHERE (SELECT m.rev_id FROM ref_moves m WHERE m.repo_id = c.repo_id AND m.ref = c.ref"
            " AND m.seen_at <= ? ORDER BY m.seen_at DESC, m.id DESC LIMIT 1) = ?",
            (rev_id, at if at is not None else float("inf"), rev_id))
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
