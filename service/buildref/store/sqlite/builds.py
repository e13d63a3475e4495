"""Derivations, their closure graph, outputs and builds in SQLite."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence

import aiosqlite

from buildref.models import Build, DerivationInfo
from buildref.store.api import (
    BuildRecord,
    BuiltOutput,
    ClosureItem,
    ContentRecord,
    FlatFixed,
    IndexedBuild,
    TableCounts,
)
from buildref.store.rows import CONTENT, closure_items, content, derivation_info
from buildref.store.sqlite.database import Database, many, rows, rows_in


class SqliteBuildIndex:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, builds: Sequence[BuildRecord]) -> None:
        now = time.time()
        drvs = [d for b in builds for d in b.new]
        realised = [r for b in builds for r in b.realised]
        async with self._db.transaction() as conn:
            await many(conn,
                "INSERT INTO derivations (path, name, system, fixed_mode, fixed_hash, modulo,"
                " first_seen, rev_hint, path_hint)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO NOTHING",
                [(d.path, d.name, d.system, d.fixed_mode, d.fixed_hash, d.modulo, now, d.rev_hint,
                  d.path_hint) for d in drvs],
            )
            await many(conn,
                # a path gone when it was looked at may be back (a fixed output built since)
                "INSERT INTO contents (path, state) VALUES (?, 'pending')"
                " ON CONFLICT (path) DO UPDATE SET state = 'pending' WHERE contents.state = 'gone'",
                [(path,) for b in builds for path in b.contents])
            # ids after insertion: inputs may be new in this transaction or indexed long ago
            wanted = {*(b.drv_path for b in builds), *(d.path for d in drvs),
                      *(p for d in drvs for p, _ in d.input_drvs), *(r.drv for r in realised)}
            ids: dict[str, int] = dict(await rows_in(conn, "SELECT path, id FROM derivations"
                                                           " WHERE path IN ({marks})", wanted))
            await many(conn,
                "INSERT INTO outputs (drv_id, name, path) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(ids[d.path], name, path) for d in drvs for name, path in d.outputs],
            )
            await many(conn,
                "INSERT INTO drv_inputs (drv_id, input_id, outputs) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(ids[d.path], ids[p], outs) for d in drvs for p, outs in d.input_drvs],
            )
            await many(conn,
                "INSERT INTO src_inputs (drv_id, path) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(ids[d.path], p) for d in drvs for p in d.input_srcs],
            )
            await many(conn,
                "UPDATE outputs SET path = ? WHERE drv_id = ? AND name = ? AND path IS NULL",
                [(r.path, ids[r.drv], r.output) for r in realised],
            )
            await many(conn,
                "INSERT INTO builds (event_id, drv_id, built_at, builder) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [(b.event_id, ids[b.drv_path], b.built_at, b.builder) for b in builds],
            )
            await many(conn,
                "INSERT INTO build_outputs (event_id, name, path) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(b.event_id, name, path) for b in builds for name, path in b.outputs],
            )
            await many(conn, "UPDATE events SET state = 'indexed', error = NULL, indexed_at = ?"
                                   " WHERE id = ?", [(now, b.event_id) for b in builds])

    async def pending_contents(self, limit: int) -> list[str]:
        async with self._db.snapshot() as conn:
            found = await rows(conn, "SELECT path FROM contents WHERE state = 'pending' LIMIT ?", (limit,))
        return [path for (path,) in found]

    async def record_contents(self, contents: Sequence[ContentRecord]) -> None:
        async with self._db.transaction() as conn:
            await many(conn,
                "UPDATE contents SET state = ?, nar_hash = ?, nar_size = ?, form = ?, files = ?,"
                " identifying = ?, error = ? WHERE path = ?",
                [(c.state.value, c.nar_hash, c.nar_size, c.form, c.files, int(c.identifying), c.error, c.path)
                 for c in contents])
            paths = [(c.path,) for c in contents]
            await many(conn, "DELETE FROM content_dirs WHERE path = ?", paths)
            await many(conn, "DELETE FROM content_samples WHERE path = ?", paths)
            await many(conn, "INSERT INTO content_dirs (form, path, subdir) VALUES (?, ?, ?)"
                                   " ON CONFLICT DO NOTHING",
                                   [(form, c.path, subdir) for c in contents for subdir, form in c.dirs])
            await many(conn, "INSERT INTO content_samples (blob, path, file) VALUES (?, ?, ?)"
                                   " ON CONFLICT DO NOTHING",
                                   [(blob, c.path, file) for c in contents for file, blob in c.samples])


class SqliteBuildQueries:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def _outputs_of(self, event_ids: Iterable[int]) -> dict[int, dict[str, str]]:
        """The outputs found in the store by each of these builds (events)."""
        outputs: dict[int, dict[str, str]] = {i: {} for i in event_ids}
        for event_id, name, path in await rows_in(
                self._conn, "SELECT event_id, name, path FROM build_outputs WHERE event_id IN ({marks})"
                            " ORDER BY name", outputs):
            outputs[event_id][name] = path
        return outputs

    async def known_modulo(self, paths: Collection[str]) -> dict[str, str]:
        return dict(await rows_in(self._conn, "SELECT path, modulo FROM derivations WHERE path IN ({marks})",
                                  paths))

    async def recent(self, since: float, limit: int) -> list[Build]:
        found = await rows(
            self._conn,
            "SELECT b.event_id, d.path, d.name, d.system, b.built_at, b.builder FROM builds b"
            " JOIN derivations d ON d.id = b.drv_id WHERE b.built_at >= ?"
            " ORDER BY b.built_at DESC, b.event_id DESC LIMIT ?", (since, limit))
        outputs = await self._outputs_of(row[0] for row in found)
        return [Build(path, name, system, built_at, outputs[event_id], builder)
                for event_id, path, name, system, built_at, builder in found]

    async def newest_builds(self, drv_ids: Collection[int]) -> list[IndexedBuild]:
        found = await rows_in(
            self._conn,
            "SELECT b.drv_id, d.path, d.name, d.system, max(b.built_at), b.event_id, b.builder FROM builds b"
            " JOIN derivations d ON d.id = b.drv_id WHERE b.drv_id IN ({marks}) GROUP BY b.drv_id", drv_ids)
        outputs = await self._outputs_of(row[5] for row in found)
        return [IndexedBuild(drv_id, Build(path, name, system, built_at, outputs[event_id], builder))
                for drv_id, path, name, system, built_at, event_id, builder in found]

    async def producer(self, path: str) -> BuiltOutput | None:
        found = await rows(
            self._conn,
            "SELECT b.drv_id, d.path, o.name, b.built_at, b.builder FROM build_outputs o"
            " JOIN builds b ON b.event_id = o.event_id JOIN derivations d ON d.id = b.drv_id"
            " WHERE o.path = ? ORDER BY b.built_at DESC LIMIT 1", (path,))
        return BuiltOutput(*found[0]) if found else None

    async def closure(self, drv_id: int) -> list[ClosureItem]:
        distance = dict(await rows(
            self._conn,
            "WITH RECURSIVE closure (id, distance) AS (SELECT ?, 0"
            " UNION SELECT e.input_id, c.distance + 1 FROM drv_inputs e JOIN closure c ON e.drv_id = c.id)"
            " SELECT id, min(distance) FROM closure GROUP BY id", (drv_id,)))
        # by key, not joined to the closure: a join the planner misjudged cost 5 ms here
        sources = await rows_in(self._conn, "SELECT drv_id, path FROM src_inputs WHERE drv_id IN ({marks})",
                                distance)
        fixed = await rows_in(
            self._conn,
            "SELECT d.id, d.fixed_hash, d.rev_hint, d.path_hint, o.path FROM derivations d"
            " LEFT JOIN outputs o ON o.drv_id = d.id WHERE d.id IN ({marks}) AND (d.fixed_mode = 'recursive'"
            " OR (d.fixed_mode = 'flat' AND d.path_hint IS NOT NULL))", distance)
        return closure_items(distance, sources, fixed)

    async def derivations_using(self, store_paths: Collection[str], nar_hashes: Collection[str],
                                max_distance: int, drv_ids: Collection[int] = ()) -> dict[int, int]:
        if not store_paths and not nar_hashes and not drv_ids:
            return {}
        paths = ",".join("?" * len(store_paths)) or "NULL"
        hashes = ",".join("?" * len(nar_hashes)) or "NULL"
        ids = ",".join("?" * len(drv_ids)) or "NULL"
        found = await rows(
            self._conn,
            "WITH RECURSIVE users (drv_id, distance) AS ("
            f" SELECT drv_id, 0 FROM src_inputs WHERE path IN ({paths})"
            " UNION SELECT d.id, 0 FROM derivations d JOIN outputs o ON o.drv_id = d.id"
            f" WHERE d.fixed_mode = 'recursive' AND o.path IN ({paths})"
            " UNION SELECT id, 0 FROM derivations WHERE fixed_mode = 'recursive'"
            f" AND fixed_hash IN ({hashes})"
            f" UNION SELECT id, 0 FROM derivations WHERE id IN ({ids})"
            " UNION SELECT e.drv_id, u.distance + 1 FROM drv_inputs e JOIN users u ON e.input_id = u.drv_id"
            " WHERE u.distance < ?)"
            " SELECT drv_id, min(distance) FROM users GROUP BY drv_id",
            [*store_paths, *store_paths, *nar_hashes, *drv_ids, max_distance])
        return dict(found)

    async def contents(self, paths: Collection[str]) -> dict[str, ContentRecord]:
        found = await rows_in(self._conn, f"SELECT {CONTENT} FROM contents WHERE path IN ({{marks}})", paths)
        return {row[0]: content(row) for row in found}

    async def contents_with_forms(self, forms: Collection[bytes]) -> list[ContentRecord]:
        found = await rows_in(self._conn, f"SELECT {CONTENT} FROM contents WHERE form IN ({{marks}})"
                                          " AND identifying = 1", forms)
        return [content(row) for row in found]

    async def contents_with_hashes(self, nar_hashes: Collection[str]) -> list[ContentRecord]:
        found = await rows_in(self._conn, f"SELECT {CONTENT} FROM contents WHERE nar_hash IN ({{marks}})",
                              nar_hashes)
        return [content(row) for row in found]

    async def contents_with_dirs(self, forms: Collection[bytes]) -> list[tuple[str, str, bytes]]:
        found = await rows_in(self._conn, "SELECT path, subdir, form FROM content_dirs"
                                          " WHERE form IN ({marks})", forms)
        return [(path, subdir, form) for path, subdir, form in found]

    async def dirs_of(self, paths: Collection[str]) -> dict[str, list[tuple[str, bytes]]]:
        found: dict[str, list[tuple[str, bytes]]] = {}
        for path, subdir, form in await rows_in(
                self._conn, "SELECT path, subdir, form FROM content_dirs WHERE path IN ({marks})", paths):
            found.setdefault(path, []).append((subdir, form))
        return found

    async def contents_sampled(self, blobs: Collection[bytes]) -> dict[str, list[tuple[str, bytes]]]:
        paths = {path for (path,) in await rows_in(
            self._conn, "SELECT DISTINCT path FROM content_samples WHERE blob IN ({marks})", blobs)}
        return await self.samples_of(paths)

    async def samples_of(self, paths: Collection[str]) -> dict[str, list[tuple[str, bytes]]]:
        found: dict[str, list[tuple[str, bytes]]] = {}
        for path, file, blob in await rows_in(
                self._conn, "SELECT path, file, blob FROM content_samples WHERE path IN ({marks})", paths):
            found.setdefault(path, []).append((file, blob))
        return found

    async def flat_fixed(self, rev: str) -> list[FlatFixed]:
        found = await rows(self._conn,
                           "SELECT d.id, d.fixed_hash, d.rev_hint, d.path_hint, o.path FROM derivations d"
                           " LEFT JOIN outputs o ON o.drv_id = d.id WHERE d.rev_hint = ?"
                           " AND d.fixed_mode = 'flat' AND d.path_hint IS NOT NULL", (rev,))
        return [FlatFixed(*row) for row in found]

    async def content_backlog(self) -> int:
        return int((await rows(self._conn, "SELECT count(*) FROM contents WHERE state = 'pending'"))[0][0])

    async def derivation(self, path: str) -> DerivationInfo | None:
        found = await rows(self._conn, "SELECT id, name, system, fixed_mode, fixed_hash FROM derivations"
                                       " WHERE path = ?", (path,))
        if not found:
            return None
        drv_id, name, system, mode, fixed_hash = found[0]
        outputs = dict(await rows(self._conn, "SELECT name, path FROM outputs WHERE drv_id = ? ORDER BY name",
                                  (drv_id,)))
        inputs = await rows(self._conn, "SELECT d.path, e.outputs FROM drv_inputs e"
                                        " JOIN derivations d ON d.id = e.input_id WHERE e.drv_id = ?"
                                        " ORDER BY d.path", (drv_id,))
        srcs = await rows(self._conn, "SELECT path FROM src_inputs WHERE drv_id = ? ORDER BY path", (drv_id,))
        built = await rows(self._conn, "SELECT event_id, built_at, builder FROM builds WHERE drv_id = ?"
                                       " ORDER BY built_at DESC, event_id DESC", (drv_id,))
        build_outputs = await self._outputs_of(event_id for event_id, _, _ in built)
        return derivation_info(path, (name, system, mode, fixed_hash), outputs, inputs, srcs, built,
                               build_outputs)

    async def table_counts(self) -> TableCounts:
        counts = [(await rows(self._conn, f"SELECT count(*) FROM {table}"))[0][0]  # fixed names
                  for table in ("derivations", "outputs", "builds")]
        return TableCounts(*counts)
