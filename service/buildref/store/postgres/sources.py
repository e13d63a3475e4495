"""Repositories, their ref history, recorded revisions and the forms of their directories
(content-addressed), and flake.lock pins in PostgreSQL. Several builders may record one
repository: a repository's writes are serialised by an advisory lock, and a ref move is kept only
when it moves the ref from where the index has it (so the same pass twice is one move)."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

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
from buildref.store.postgres.builds import _columns
from buildref.store.postgres.database import Conn, PgDatabase, Snapshot
from buildref.store.rows import REVISION, TREE, tree

_REPOSITORY = "id, name, path, url, recorded_by, builder"


async def _lock(conn: Conn, what: str) -> None:
    """Serialise, across every service, the transactions that write ``what``."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", what)


class PgSourceIndex:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def record_revisions(self, repo: RepositoryRecord, revisions: Sequence[RevisionRecord],
                               forms: Collection[bytes], trees: Sequence[TreeRecord],
                               moves: Sequence[RefChange]) -> None:
        now = time.time()
        revision_rows = sorted({r.rev: (r.rev, r.commit_time, r.root_export_ignore, r.root_raw)
                                for r in revisions}.values())
        tree_rows = sorted({t.form: (t.form, t.raw, t.nar_hash, t.nar_size, t.files, t.identifying)
                            for t in trees}.values())

        async def work(conn: Conn) -> None:
            await _lock(conn, f"repository:{repo.name}")
            repo_id = await conn.fetchval(
                "INSERT INTO repositories (name, path, url, recorded_by, builder) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (name) DO UPDATE SET path = excluded.path, url = excluded.url,"
                " recorded_by = excluded.recorded_by, builder = excluded.builder RETURNING id",
                repo.name, repo.path, repo.url, repo.recorded_by, repo.builder)
            if revision_rows:
                await conn.execute(
                    "INSERT INTO revisions (repo_id, rev, commit_time, root_export_ignore, root_raw)"
                    " SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::bytea[], $5::bytea[]) ORDER BY 2"
                    " ON CONFLICT (repo_id, rev) DO UPDATE SET"
                    " root_export_ignore = excluded.root_export_ignore, root_raw = excluded.root_raw",
                    repo_id, *_columns(revision_rows, 4))
            if tree_rows:
                await conn.execute(
                    "INSERT INTO trees (form, raw, nar_hash, nar_size, files, identifying)"
                    " SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::bigint[], $5::bigint[],"
                    " $6::boolean[]) ORDER BY 1 ON CONFLICT DO NOTHING", *_columns(tree_rows, 6))
            if forms:
                await conn.execute("INSERT INTO repo_trees (form, repo_id)"
                                   " SELECT f, $2 FROM unnest($1::bytea[]) f ORDER BY 1"
                                   " ON CONFLICT DO NOTHING", sorted(forms), repo_id)
            if moves:
                # only the revisions this pass names, however long the repository's history
                rev_ids = {rev: i for rev, i in await conn.fetch(
                    "SELECT rev, id FROM revisions WHERE repo_id = $1 AND rev = ANY($2::text[])",
                    repo_id, list({m.rev for m in moves if m.rev}))}
                current = {ref: rev_id for ref, rev_id in await conn.fetch(
                    "SELECT DISTINCT ON (ref) ref, rev_id FROM ref_moves WHERE repo_id = $1"
                    " AND ref = ANY($2::text[]) ORDER BY ref, id DESC", repo_id, [m.ref for m in moves])}
                rows = []
                for m in moves:
                    target = rev_ids[m.rev] if m.rev else None
                    if current.get(m.ref) == target:
                        continue  # already there: recorded by another builder, or by this pass before
                    current[m.ref] = target
                    rows.append((m.ref, target))
                if rows:
                    await conn.executemany(
                        "INSERT INTO ref_moves (repo_id, ref, rev_id, seen_at) VALUES ($1, $2, $3, $4)",
                        [(repo_id, ref, target, now) for ref, target in rows])

        await self._db.write(work)

    async def replace_lock(self, lock_file: str, inputs: Sequence[LockRecord]) -> None:
        async def work(conn: Conn) -> None:
            await _lock(conn, f"lock:{lock_file}")
            await conn.execute("DELETE FROM locked_inputs WHERE lock_file = $1", lock_file)
            await conn.executemany(
                "INSERT INTO locked_inputs (lock_file, input, type, location, ref, rev, nar_hash, store_path)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                [(lock_file, i.input, i.type, i.location, i.ref, i.rev, i.nar_hash, i.store_path)
                 for i in inputs])

        await self._db.write(work)


class PgSourceQueries:
    def __init__(self, snapshot: Snapshot) -> None:
        self._conn = snapshot

    async def repository(self, name: str) -> RepositoryInfo | None:
        found = await self._conn.fetchrow(f"SELECT {_REPOSITORY} FROM repositories WHERE name = $1", name)
        return RepositoryInfo(*found) if found else None

    async def repositories(self) -> list[RepositoryInfo]:
        found = await self._conn.fetch(f"SELECT {_REPOSITORY} FROM repositories ORDER BY id")
        return [RepositoryInfo(*row) for row in found]

    async def usage(self, recorded_by: str) -> SourceUsage:
        row = await self._conn.fetchrow(
            "SELECT count(*), coalesce(sum((SELECT count(*) FROM revisions WHERE repo_id = r.id)"
            " + (SELECT count(*) FROM ref_moves WHERE repo_id = r.id)"
            " + (SELECT count(*) FROM repo_trees WHERE repo_id = r.id)), 0)"
            " FROM repositories r WHERE r.recorded_by = $1", recorded_by)
        assert row is not None
        return SourceUsage(int(row[0]), int(row[1]))

    async def current_refs(self, repo_id: int) -> dict[str, str | None]:
        found = await self._conn.fetch(
            "SELECT m.ref, v.rev FROM (SELECT DISTINCT ON (ref) ref, rev_id FROM ref_moves"
            " WHERE repo_id = $1 ORDER BY ref, id DESC) m LEFT JOIN revisions v ON v.id = m.rev_id", repo_id)
        return {ref: rev for ref, rev in found}

    async def revisions(self, repo_id: int, revs: Collection[str]) -> dict[str, RevisionInfo]:
        found = await self._conn.fetch(f"SELECT {REVISION} FROM revisions"
                                       " WHERE repo_id = $1 AND rev = ANY($2::text[])", repo_id, list(revs))
        return {row[2]: RevisionInfo(*row) for row in found}

    async def revisions_with_roots(self, forms: Collection[bytes]) -> list[RevisionInfo]:
        found = await self._conn.fetch(
            f"SELECT {REVISION} FROM revisions WHERE root_export_ignore = ANY($1::bytea[])"
            f" UNION SELECT {REVISION} FROM revisions WHERE root_raw = ANY($1::bytea[]) ORDER BY 1",
            list(forms))
        return [RevisionInfo(*row) for row in found]

    async def ref_target(self, repo_id: int, names: Sequence[str], at: float) -> tuple[str, str] | None:
        # every name's latest move in one round trip, each by index (a LIMIT 1 per name)
        found = await self._conn.fetch(
            "SELECT n.ref, (SELECT v.rev FROM ref_moves m LEFT JOIN revisions v ON v.id = m.rev_id"
            " WHERE m.repo_id = $1 AND m.ref = n.ref AND m.seen_at <= $3"
            " ORDER BY m.seen_at DESC, m.id DESC LIMIT 1)"
            " FROM unnest($2::text[]) WITH ORDINALITY AS n (ref, i) ORDER BY n.i", repo_id, list(names), at)
        return next(((name, rev) for name, rev in found if rev is not None), None)

    async def revs_with_prefix(self, repo_id: int, prefix: str) -> list[str]:
        found = await self._conn.fetch("SELECT rev FROM revisions WHERE repo_id = $1 AND rev >= $2"
                                       " AND rev < $3", repo_id, prefix, prefix + "g")
        return [rev for (rev,) in found]

    async def trees(self, forms: Collection[bytes]) -> dict[bytes, TreeRecord]:
        found = await self._conn.fetch(f"SELECT {TREE} FROM trees WHERE form = ANY($1::bytea[])",
                                       list(forms))
        return {row[0]: tree(row) for row in found}

    async def trees_with_hash(self, nar_hash: str) -> list[TreeRecord]:
        found = await self._conn.fetch(f"SELECT {TREE} FROM trees WHERE nar_hash = $1", nar_hash)
        return [tree(row) for row in found]

    async def repository_forms(self, repo_id: int) -> list[bytes]:
        return [form for (form,) in await self._conn.fetch("SELECT form FROM repo_trees WHERE repo_id = $1",
                                                           repo_id)]

    async def refs_at(self, repo_id: int, rev: str, at: float | None) -> list[str]:
        # Only refs that ever pointed at the revision can point at it now; each is checked by its
        # latest move up to ``at`` (both by index, whatever the length of the history).
        found = await self._conn.fetch(
            "SELECT c.ref FROM (SELECT DISTINCT m.ref, m.rev_id FROM ref_moves m JOIN revisions v ON"
            " v.id = m.rev_id WHERE v.repo_id = $1 AND v.rev = $2) c"
            " WHERE (SELECT m.rev_id FROM ref_moves m WHERE m.repo_id = $1 AND m.ref = c.ref"
            " AND m.seen_at <= $3 ORDER BY m.seen_at DESC, m.id DESC LIMIT 1) = c.rev_id",
            repo_id, rev, at if at is not None else float("inf"))
        return sorted(ref for (ref,) in found)

    async def locked_inputs(self, paths: Collection[str], hashes: Collection[str]) -> list[LockedInput]:
        found = await self._conn.fetch(
            "SELECT store_path, nar_hash, location, type, ref, rev, lock_file, input FROM locked_inputs"
            " WHERE store_path = ANY($1::text[]) OR nar_hash = ANY($2::text[]) ORDER BY lock_file, input",
            list(paths), list(hashes))
        return [LockedInput(*row) for row in found]

    async def ref_history(self, repo_id: int) -> list[RefMove]:
        found = await self._conn.fetch(
            "SELECT m.ref, v.rev, m.seen_at FROM ref_moves m LEFT JOIN revisions v ON v.id = m.rev_id"
            " WHERE m.repo_id = $1 ORDER BY m.ref, m.id", repo_id)
        return [RefMove(ref, rev, seen) for ref, rev, seen in found]
