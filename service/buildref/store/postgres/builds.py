"""Derivations, their closure graph, outputs and builds in PostgreSQL: the same questions as
``store/sqlite/builds.py``, written for many writers (rows taken in a fixed order, every insert
idempotent) and asked with arrays (``= ANY($1)``) instead of IN lists."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from buildref.models import Build, DerivationInfo
from buildref.store.api import (
    BuildRecord,
    BuiltOutput,
    ClosureItem,
    ContentRecord,
    DerivationRecord,
    FlatFixed,
    IndexedBuild,
    TableCounts,
)
from buildref.store.postgres.database import Conn, PgDatabase, Snapshot
from buildref.store.rows import CONTENT, closure_items, content, derivation_info


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as columns: the arrays ``unnest`` turns back into rows."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


class PgBuildIndex:
    """What the ingest pipeline writes. ``builder``: the service's own name, whose queued
    contents it learns (a store path is learnt where it was built: another builder may not have it)."""

    def __init__(self, db: PgDatabase, builder: str) -> None:
        self._db = db
        self._builder = builder

    async def record(self, builds: Sequence[BuildRecord]) -> None:
        if any(not b.builder for b in builds):
            raise ValueError("a shared index records each build with its builder")
        now = time.time()
        drvs = sorted({d.path: d for b in builds for d in b.new}.values(), key=lambda d: d.path)

        async def work(conn: Conn) -> None:
            await _insert_derivations(conn, drvs, now)
            # a path gone when it was looked at may be back (a fixed output built since): it is
            # learnt again, by the builder that has it now
            queued = sorted({(path, b.builder) for b in builds for path in b.contents})
            queued = list({path: (path, builder) for path, builder in queued}.values())
            if queued:
                await conn.execute(
                    "INSERT INTO contents (path, state, queued_by)"
                    " SELECT path, 'pending', builder"
                    " FROM unnest($1::text[], $2::text[]) AS u (path, builder)"
                    " ORDER BY path"
                    " ON CONFLICT (path) DO UPDATE SET state = 'pending', queued_by = excluded.queued_by"
                    " WHERE contents.state = 'gone'", *_columns(queued, 2))
            wanted = {*(b.drv_path for b in builds), *(d.path for d in drvs),
                      *(p for d in drvs for p, _ in d.input_drvs),
                      *(r.drv for b in builds for r in b.realised)}
            ids: dict[str, int] = {path: i for path, i in await conn.fetch(
                "SELECT path, id FROM derivations WHERE path = ANY($1::text[])", list(wanted))}
            await _insert_graph(conn, drvs, ids)
            realised = sorted({(ids[r.drv], r.output, r.path) for b in builds for r in b.realised})
            if realised:
                await conn.execute(
                    "UPDATE outputs o SET path = u.path"
                    " FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u (drv_id, name, path)"
                    " WHERE o.drv_id = u.drv_id AND o.name = u.name AND o.path IS NULL",
                    *_columns(realised, 3))
            keys = sorted({(b.builder, ids[b.drv_path], b.built_at) for b in builds})
            await conn.execute(
                "INSERT INTO builds (builder, drv_id, built_at, recorded_at)"
                " SELECT builder, drv_id, built_at, $4"
                " FROM unnest($1::text[], $2::bigint[], $3::float8[]) AS u (builder, drv_id, built_at)"
                " ORDER BY builder, drv_id, built_at"
                " ON CONFLICT (builder, drv_id, built_at) DO NOTHING", *_columns(keys, 3), now)
            build_ids = {(builder, drv_id, built_at): i for i, builder, drv_id, built_at in await conn.fetch(
                "SELECT b.id, b.builder, b.drv_id, b.built_at FROM builds b"
                " JOIN unnest($1::text[], $2::bigint[], $3::float8[]) AS u (builder, drv_id, built_at)"
                " ON b.builder = u.builder AND b.drv_id = u.drv_id AND b.built_at = u.built_at",
                *_columns(keys, 3))}
            outputs = sorted({(build_ids[(b.builder, ids[b.drv_path], b.built_at)], name, path)
                              for b in builds for name, path in b.outputs})
            if outputs:
                await conn.execute(
                    "INSERT INTO build_outputs (build_id, name, path)"
                    " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[]) ORDER BY 1, 2"
                    " ON CONFLICT DO NOTHING", *_columns(outputs, 3))

        await self._db.write(work)

    async def pending_contents(self, limit: int) -> list[str]:
        async with self._db.snapshot() as conn:
            found = await conn.fetch("SELECT path FROM contents WHERE state = 'pending' AND queued_by = $1"
                                     " LIMIT $2", self._builder, limit)
        return [path for (path,) in found]

    async def record_contents(self, contents: Sequence[ContentRecord]) -> None:
        rows = sorted((c.path, c.state.value, c.nar_hash, c.nar_size, c.form, c.files, c.identifying, c.error)
                      for c in contents)
        paths = sorted({c.path for c in contents})
        dirs = sorted({(form, c.path, subdir) for c in contents for subdir, form in c.dirs})
        samples = sorted({(blob, c.path, file) for c in contents for file, blob in c.samples})

        async def work(conn: Conn) -> None:
            await conn.execute(
                "UPDATE contents c SET state = u.state, nar_hash = u.nar_hash, nar_size = u.nar_size,"
                " form = u.form, files = u.files, identifying = u.identifying, error = u.error"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bytea[], $6::bigint[],"
                " $7::boolean[], $8::text[]) AS u (path, state, nar_hash, nar_size, form, files, identifying,"
                " error) WHERE c.path = u.path", *_columns(rows, 8))
            # what is learnt replaces what was (a path learnt again after it was gone)
            await conn.execute("DELETE FROM content_dirs WHERE path = ANY($1::text[])", paths)
            await conn.execute("DELETE FROM content_samples WHERE path = ANY($1::text[])", paths)
            if dirs:
                await conn.execute("INSERT INTO content_dirs (form, path, subdir)"
                                   " SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[])"
                                   " ORDER BY 1, 2, 3 ON CONFLICT DO NOTHING", *_columns(dirs, 3))
            if samples:
                await conn.execute("INSERT INTO content_samples (blob, path, file)"
                                   " SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[])"
                                   " ORDER BY 1, 2, 3 ON CONFLICT DO NOTHING", *_columns(samples, 3))

        if rows:
            await self._db.write(work)


async def _insert_derivations(conn: Conn, drvs: Sequence[DerivationRecord], now: float) -> None:
    if not drvs:
        return
    await conn.execute(
        "INSERT INTO derivations (path, name, system, fixed_mode, fixed_hash, modulo, first_seen, rev_hint,"
        " path_hint)"
        " SELECT path, name, system, fixed_mode, fixed_hash, modulo, $7, rev_hint, path_hint"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $8::text[],"
        " $9::text[]) AS u (path, name, system, fixed_mode, fixed_hash, modulo, rev_hint, path_hint)"
        " ORDER BY path ON CONFLICT (path) DO NOTHING",
        [d.path for d in drvs], [d.name for d in drvs], [d.system for d in drvs],
        [d.fixed_mode for d in drvs], [d.fixed_hash for d in drvs], [d.modulo for d in drvs], now,
        [d.rev_hint for d in drvs], [d.path_hint for d in drvs])


async def _insert_graph(conn: Conn, drvs: Sequence[DerivationRecord],
                        ids: dict[str, int]) -> None:
    """The outputs and inputs of new derivations (another writer may have written them first)."""
    outputs = sorted({(ids[d.path], name, path) for d in drvs for name, path in d.outputs})
    inputs = sorted({(ids[d.path], ids[p], outs) for d in drvs for p, outs in d.input_drvs})
    sources = sorted({(ids[d.path], p) for d in drvs for p in d.input_srcs})
    if outputs:
        await conn.execute("INSERT INTO outputs (drv_id, name, path)"
                           " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[]) ORDER BY 1, 2"
                           " ON CONFLICT DO NOTHING", *_columns(outputs, 3))
    if inputs:
        await conn.execute("INSERT INTO drv_inputs (drv_id, input_id, outputs)"
                           " SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[]) ORDER BY 1, 2"
                           " ON CONFLICT DO NOTHING", *_columns(inputs, 3))
    if sources:
        await conn.execute("INSERT INTO src_inputs (drv_id, path)"
                           " SELECT * FROM unnest($1::bigint[], $2::text[]) ORDER BY 1, 2"
                           " ON CONFLICT DO NOTHING", *_columns(sources, 2))


class PgBuildQueries:
    def __init__(self, snapshot: Snapshot) -> None:
        self._conn = snapshot

    async def _outputs_of(self, build_ids: Iterable[int]) -> dict[int, dict[str, str]]:
        """The outputs found in the store by each of these builds."""
        outputs: dict[int, dict[str, str]] = {i: {} for i in build_ids}
        if outputs:
            for build_id, name, path in await self._conn.fetch(
                    "SELECT build_id, name, path FROM build_outputs WHERE build_id = ANY($1::bigint[])"
                    " ORDER BY name", list(outputs)):
                outputs[build_id][name] = path
        return outputs

    async def known_modulo(self, paths: Collection[str]) -> dict[str, str]:
        found = await self._conn.fetch("SELECT path, modulo FROM derivations WHERE path = ANY($1::text[])",
                                       list(paths))
        return {path: modulo for path, modulo in found}

    async def recent(self, since: float, limit: int) -> list[Build]:
        found = await self._conn.fetch(
            "SELECT b.id, d.path, d.name, d.system, b.built_at, b.builder FROM builds b"
            " JOIN derivations d ON d.id = b.drv_id WHERE b.built_at >= $1"
            " ORDER BY b.built_at DESC, b.id DESC LIMIT $2", since, limit)
        outputs = await self._outputs_of(row[0] for row in found)
        return [Build(path, name, system, built_at, outputs[i], builder)
                for i, path, name, system, built_at, builder in found]

    async def newest_builds(self, drv_ids: Collection[int]) -> list[IndexedBuild]:
        if not drv_ids:
            return []
        found = await self._conn.fetch(
            "SELECT DISTINCT ON (b.drv_id) b.drv_id, d.path, d.name, d.system, b.built_at, b.id, b.builder"
            " FROM builds b JOIN derivations d ON d.id = b.drv_id WHERE b.drv_id = ANY($1::bigint[])"
            " ORDER BY b.drv_id, b.built_at DESC, b.id DESC", list(drv_ids))
        outputs = await self._outputs_of(row[5] for row in found)
        return [IndexedBuild(drv_id, Build(path, name, system, built_at, outputs[i], builder))
                for drv_id, path, name, system, built_at, i, builder in found]

    async def producer(self, path: str) -> BuiltOutput | None:
        found = await self._conn.fetchrow(
            "SELECT b.drv_id, d.path, o.name, b.built_at, b.builder FROM build_outputs o"
            " JOIN builds b ON b.id = o.build_id JOIN derivations d ON d.id = b.drv_id"
            " WHERE o.path = $1 ORDER BY b.built_at DESC, b.id DESC LIMIT 1", path)
        return BuiltOutput(*found) if found else None

    async def closure(self, drv_id: int) -> list[ClosureItem]:
        distance: dict[int, int] = {i: d for i, d in await self._conn.fetch(
            "WITH RECURSIVE closure (id, distance) AS (SELECT $1::bigint, 0"
            " UNION SELECT e.input_id, c.distance + 1 FROM drv_inputs e JOIN closure c ON e.drv_id = c.id)"
            " SELECT id, min(distance) FROM closure GROUP BY id", drv_id)}
        sources = await self._conn.fetch(
            "SELECT drv_id, path FROM src_inputs WHERE drv_id = ANY($1::bigint[])", list(distance))
        fixed = await self._conn.fetch(
            "SELECT d.id, d.fixed_hash, d.rev_hint, d.path_hint, o.path FROM derivations d"
            " LEFT JOIN outputs o ON o.drv_id = d.id WHERE d.id = ANY($1::bigint[])"
            " AND (d.fixed_mode = 'recursive' OR (d.fixed_mode = 'flat' AND d.path_hint IS NOT NULL))",
            list(distance))
        return closure_items(distance, sources, fixed)

    async def derivations_using(self, store_paths: Collection[str], nar_hashes: Collection[str],
                                max_distance: int, drv_ids: Collection[int] = ()) -> dict[int, int]:
        if not store_paths and not nar_hashes and not drv_ids:
            return {}
        found = await self._conn.fetch(
            "WITH RECURSIVE users (drv_id, distance) AS ("
            " SELECT drv_id, 0 FROM src_inputs WHERE path = ANY($1::text[])"
            " UNION SELECT d.id, 0 FROM derivations d JOIN outputs o ON o.drv_id = d.id"
            " WHERE d.fixed_mode = 'recursive' AND o.path = ANY($1::text[])"
            " UNION SELECT id, 0 FROM derivations"
            " WHERE fixed_mode = 'recursive' AND fixed_hash = ANY($2::text[])"
            " UNION SELECT id, 0 FROM derivations WHERE id = ANY($4::bigint[])"
            " UNION SELECT e.drv_id, u.distance + 1 FROM drv_inputs e JOIN users u ON e.input_id = u.drv_id"
            " WHERE u.distance < $3)"
            " SELECT drv_id, min(distance) FROM users GROUP BY drv_id",
            list(store_paths), list(nar_hashes), max_distance, list(drv_ids))
        return {i: d for i, d in found}

    async def contents(self, paths: Collection[str]) -> dict[str, ContentRecord]:
        found = await self._conn.fetch(f"SELECT {CONTENT} FROM contents WHERE path = ANY($1::text[])",
                                       list(paths))
        return {row[0]: content(row) for row in found}

    async def contents_with_forms(self, forms: Collection[bytes]) -> list[ContentRecord]:
        found = await self._conn.fetch(f"SELECT {CONTENT} FROM contents WHERE form = ANY($1::bytea[])"
                                       " AND identifying", list(forms))
        return [content(row) for row in found]

    async def contents_with_hashes(self, nar_hashes: Collection[str]) -> list[ContentRecord]:
        found = await self._conn.fetch(f"SELECT {CONTENT} FROM contents WHERE nar_hash = ANY($1::text[])",
                                       list(nar_hashes))
        return [content(row) for row in found]

    async def contents_with_dirs(self, forms: Collection[bytes]) -> list[tuple[str, str, bytes]]:
        found = await self._conn.fetch("SELECT path, subdir, form FROM content_dirs"
                                       " WHERE form = ANY($1::bytea[])", list(forms))
        return [(path, subdir, form) for path, subdir, form in found]

    async def dirs_of(self, paths: Collection[str]) -> dict[str, list[tuple[str, bytes]]]:
        found: dict[str, list[tuple[str, bytes]]] = {}
        for path, subdir, form in await self._conn.fetch(
                "SELECT path, subdir, form FROM content_dirs WHERE path = ANY($1::text[])", list(paths)):
            found.setdefault(path, []).append((subdir, form))
        return found

    async def contents_sampled(self, blobs: Collection[bytes]) -> dict[str, list[tuple[str, bytes]]]:
        found: dict[str, list[tuple[str, bytes]]] = {}
        for path, file, blob in await self._conn.fetch(
                "SELECT path, file, blob FROM content_samples WHERE path IN"
                " (SELECT path FROM content_samples WHERE blob = ANY($1::bytea[]))", list(blobs)):
            found.setdefault(path, []).append((file, blob))
        return found

    async def samples_of(self, paths: Collection[str]) -> dict[str, list[tuple[str, bytes]]]:
        found: dict[str, list[tuple[str, bytes]]] = {}
        for path, file, blob in await self._conn.fetch(
                "SELECT path, file, blob FROM content_samples WHERE path = ANY($1::text[])", list(paths)):
            found.setdefault(path, []).append((file, blob))
        return found

    async def flat_fixed(self, rev: str) -> list[FlatFixed]:
        found = await self._conn.fetch(
            "SELECT d.id, d.fixed_hash, d.rev_hint, d.path_hint, o.path FROM derivations d"
            " LEFT JOIN outputs o ON o.drv_id = d.id WHERE d.rev_hint = $1"
            " AND d.fixed_mode = 'flat' AND d.path_hint IS NOT NULL", rev)
        return [FlatFixed(*row) for row in found]

    async def content_backlog(self) -> int:
        return int(await self._conn.fetchval("SELECT count(*) FROM contents WHERE state = 'pending'"))

    async def derivation(self, path: str) -> DerivationInfo | None:
        found = await self._conn.fetchrow(
            "SELECT id, name, system, fixed_mode, fixed_hash FROM derivations WHERE path = $1", path)
        if found is None:
            return None
        drv_id, name, system, mode, fixed_hash = found
        outputs = {n: p for n, p in await self._conn.fetch(
            "SELECT name, path FROM outputs WHERE drv_id = $1 ORDER BY name", drv_id)}
        inputs = await self._conn.fetch("SELECT d.path, e.outputs FROM drv_inputs e"
                                        " JOIN derivations d ON d.id = e.input_id WHERE e.drv_id = $1"
                                        " ORDER BY d.path", drv_id)
        srcs = await self._conn.fetch("SELECT path FROM src_inputs WHERE drv_id = $1 ORDER BY path", drv_id)
        built = await self._conn.fetch("SELECT id, built_at, builder FROM builds WHERE drv_id = $1"
                                       " ORDER BY built_at DESC, id DESC", drv_id)
        build_outputs = await self._outputs_of(i for i, _, _ in built)
        return derivation_info(path, (name, system, mode, fixed_hash), outputs, inputs, srcs, built,
                               build_outputs)

    async def table_counts(self) -> TableCounts:
        row = await self._conn.fetchrow("SELECT (SELECT count(*) FROM derivations),"
                                        " (SELECT count(*) FROM outputs), (SELECT count(*) FROM builds)")
        assert row is not None
        return TableCounts(*row)
