"""The index in SQLite (WAL, synchronous=FULL), through aiosqlite: the one module that writes SQL.

Events are the durable inbox: a hook event is acknowledged only after its row is committed. The
indexer turns each pending event into derivations (with their inputs, so the closure graph is
queryable), their outputs, and a build. Every statement is parameterised.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import aiosqlite

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    drv TEXT NOT NULL,            -- as received: only trusted once the indexer has read it
    outs TEXT NOT NULL,           -- OUT_PATHS as received, space separated
    t REAL NOT NULL,              -- when the hook ran
    received_at REAL NOT NULL,
    source TEXT NOT NULL,         -- socket | spool
    state TEXT NOT NULL,          -- pending | indexed | failed
    error TEXT,
    indexed_at REAL,
    UNIQUE (drv, t)
);
CREATE INDEX IF NOT EXISTS events_pending ON events (id) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS derivations (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    system TEXT NOT NULL,
    fixed_mode TEXT,              -- flat | recursive | text, for fixed-output derivations
    fixed_hash TEXT,              -- SRI
    modulo TEXT NOT NULL,         -- hashDerivationModulo, so later closures need not re-read it
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outputs (
    drv_id INTEGER NOT NULL REFERENCES derivations (id),
    name TEXT NOT NULL,
    path TEXT,                    -- NULL until built for floating, impure and deferred outputs
    PRIMARY KEY (drv_id, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outputs_path ON outputs (path);
CREATE INDEX IF NOT EXISTS derivations_fixed ON derivations (fixed_hash) WHERE fixed_mode = 'recursive';
CREATE TABLE IF NOT EXISTS drv_inputs (
    drv_id INTEGER NOT NULL REFERENCES derivations (id),
    input_id INTEGER NOT NULL REFERENCES derivations (id),
    outputs TEXT NOT NULL,        -- the input's outputs used, space separated
    PRIMARY KEY (drv_id, input_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS drv_inputs_input ON drv_inputs (input_id);
CREATE TABLE IF NOT EXISTS src_inputs (
    drv_id INTEGER NOT NULL REFERENCES derivations (id),
    path TEXT NOT NULL,
    PRIMARY KEY (drv_id, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS src_inputs_path ON src_inputs (path);
CREATE TABLE IF NOT EXISTS builds (
    event_id INTEGER PRIMARY KEY REFERENCES events (id),
    drv_id INTEGER NOT NULL REFERENCES derivations (id),
    built_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS builds_drv ON builds (drv_id);
CREATE INDEX IF NOT EXISTS builds_time ON builds (built_at);
CREATE TABLE IF NOT EXISTS build_outputs (
    event_id INTEGER NOT NULL REFERENCES builds (event_id),
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (event_id, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS build_outputs_path ON build_outputs (path);
CREATE TABLE IF NOT EXISTS repositories (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    url TEXT
);
CREATE TABLE IF NOT EXISTS revisions (
    id INTEGER PRIMARY KEY,
    repo_id INTEGER NOT NULL REFERENCES repositories (id),
    rev TEXT NOT NULL,
    commit_time INTEGER NOT NULL,
    UNIQUE (repo_id, rev)
);
CREATE TABLE IF NOT EXISTS ref_moves (
    id INTEGER PRIMARY KEY,
    repo_id INTEGER NOT NULL REFERENCES repositories (id),
    ref TEXT NOT NULL,
    rev_id INTEGER REFERENCES revisions (id),  -- NULL: the ref was deleted
    seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ref_moves_ref ON ref_moves (repo_id, ref, id);
CREATE INDEX IF NOT EXISTS ref_moves_time ON ref_moves (repo_id, ref, seen_at, id);
CREATE INDEX IF NOT EXISTS ref_moves_rev ON ref_moves (rev_id);
CREATE TABLE IF NOT EXISTS sources (
    rev_id INTEGER NOT NULL REFERENCES revisions (id),
    subdir TEXT NOT NULL,         -- "" for the root
    rule TEXT NOT NULL,           -- export-ignore | raw
    nar_hash TEXT NOT NULL,       -- SRI
    store_path TEXT NOT NULL,
    PRIMARY KEY (rev_id, subdir, rule)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sources_path ON sources (store_path);
CREATE INDEX IF NOT EXISTS sources_hash ON sources (nar_hash);
CREATE TABLE IF NOT EXISTS locked_inputs (
    lock_file TEXT NOT NULL,      -- a path, or <repository>@<rev>:flake.lock
    input TEXT NOT NULL,          -- input path from the root, joined by "/"
    type TEXT NOT NULL,
    location TEXT NOT NULL,       -- url, or owner/repo
    ref TEXT,
    rev TEXT,
    nar_hash TEXT NOT NULL,
    store_path TEXT NOT NULL,     -- <narHash>-source
    PRIMARY KEY (lock_file, input)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS locked_inputs_path ON locked_inputs (store_path);
CREATE INDEX IF NOT EXISTS locked_inputs_hash ON locked_inputs (nar_hash);
"""

_CHUNK = 500  # stays under SQLite's limit on bound parameters
_EVENTS_PER_STATEMENT = 500  # 7 parameters each


class EventState(Enum):
    PENDING = "pending"
    INDEXED = "indexed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event as it arrives; ``error`` set when it was malformed (kept, already failed)."""

    drv: str
    outs: tuple[str, ...]
    t: float
    source: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PendingEvent:
    id: int
    drv: str
    outs: tuple[str, ...]
    t: float


@dataclass(frozen=True, slots=True)
class DrvRow:
    """One derivation as the indexer read it from the store."""

    path: str
    name: str
    system: str
    fixed_mode: str | None
    fixed_hash: str | None
    modulo: str
    outputs: tuple[tuple[str, str | None], ...]
    input_drvs: tuple[tuple[str, str], ...]  # (path, outputs used)
    input_srcs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BuildRow:
    event_id: int
    drv_path: str
    built_at: float
    outputs: tuple[tuple[str, str], ...]  # only outputs present in the store


@dataclass(frozen=True, slots=True)
class SourceRow:
    subdir: str
    rule: str
    nar_hash: str
    store_path: str


@dataclass(frozen=True, slots=True)
class RevisionRow:
    rev: str
    commit_time: int
    sources: tuple[SourceRow, ...]


class Database:
    """The index. Open with :meth:`open`; the caller closes it (the service, in one place)."""

    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        self._conn = conn
        self.path = path
        # One connection, shared by the inbox and the indexer: a write transaction must not let
        # another task's statements in between its BEGIN and COMMIT.
        self._writing = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._writing:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    @classmethod
    async def open(cls, path: str) -> Database:
        conn = await aiosqlite.connect(path, isolation_level=None)
        db = cls(conn, path)
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")  # a committed event survives power loss
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.executescript(_SCHEMA)
        await conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        return db

    async def close(self) -> None:
        await self._conn.close()

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _rows_in(self, sql: str, values: Iterable[Any], before: Sequence[Any] = ()) -> list[Any]:
        """Rows of ``sql``, whose ``{marks}`` is the IN list of ``values``, run in chunks that stay
        under SQLite's limit on bound parameters; ``before`` binds the parameters ahead of it."""
        wanted = list(values)
        rows: list[Any] = []
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i:i + _CHUNK]
            rows += await self._rows(sql.format(marks=",".join("?" * len(chunk))), [*before, *chunk])
        return rows

    async def _outputs_of(self, event_ids: Iterable[int]) -> dict[int, dict[str, str]]:
        """The outputs found in the store by each of these builds (events)."""
        outputs: dict[int, dict[str, str]] = {i: {} for i in event_ids}
        for event_id, name, path in await self._rows_in(
                "SELECT event_id, name, path FROM build_outputs WHERE event_id IN ({marks}) ORDER BY name",
                outputs):
            outputs[event_id][name] = path
        return outputs

    # -- the inbox

    async def add_events(self, events: Sequence[NewEvent]) -> None:
        """Commit a group of events in one transaction; duplicates (same drv and time) are one."""
        now = time.time()
        rows = [
            (e.drv, " ".join(e.outs), e.t, now, e.source,
             EventState.FAILED.value if e.error else EventState.PENDING.value, e.error)
            for e in events
        ]
        # One statement per group (no BEGIN/COMMIT round trips): the ack waits on this.
        async with self._writing:
            for i in range(0, len(rows), _EVENTS_PER_STATEMENT):
                chunk = rows[i:i + _EVENTS_PER_STATEMENT]
                values = ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
                await self._conn.execute(
                    "INSERT INTO events (drv, outs, t, received_at, source, state, error)"
                    f" VALUES {values} ON CONFLICT (drv, t) DO NOTHING",
                    [field for row in chunk for field in row],
                )

    async def pending_events(self, limit: int) -> list[PendingEvent]:
        rows = await self._rows(
            "SELECT id, drv, outs, t FROM events WHERE state = 'pending' ORDER BY id LIMIT ?", (limit,)
        )
        return [PendingEvent(i, drv, tuple(outs.split()), t) for i, drv, outs, t in rows]

    async def fail_event(self, event_id: int, error: str) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE events SET state = 'failed', error = ?, indexed_at = ? WHERE id = ?",
                (error, time.time(), event_id),
            )

    # -- derivations

    async def known_modulo(self, paths: Iterable[str]) -> dict[str, str]:
        """The stored modulo hash of each of ``paths`` already in the index."""
        return await self._by_path("modulo", paths)

    async def _ids(self, paths: Iterable[str]) -> dict[str, int]:
        return await self._by_path("id", paths)

    async def _by_path(self, column: str, paths: Iterable[str]) -> dict[str, Any]:
        """``column`` (a fixed name, never input) of each indexed derivation among ``paths``."""
        return dict(await self._rows_in(f"SELECT path, {column} FROM derivations WHERE path IN ({{marks}})",
                                        paths))

    async def record(self, event_id: int, drvs: Sequence[DrvRow], realised: Sequence[tuple[str, str, str]],
                     build: BuildRow) -> None:
        """In one transaction: the new derivations (inputs first or not: ids are looked up after
        insertion), floating outputs now known (drv, output, path), the build, and the event's state."""
        now = time.time()
        async with self._transaction() as conn:
            await conn.executemany(
                "INSERT INTO derivations (path, name, system, fixed_mode, fixed_hash, modulo, first_seen)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO NOTHING",
                [(d.path, d.name, d.system, d.fixed_mode, d.fixed_hash, d.modulo, now) for d in drvs],
            )
            wanted = {build.drv_path, *(d.path for d in drvs), *(p for d in drvs for p, _ in d.input_drvs),
                      *(drv for drv, _, _ in realised)}
            ids = await self._ids(wanted)
            await conn.executemany(
                "INSERT INTO outputs (drv_id, name, path) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(ids[d.path], name, path) for d in drvs for name, path in d.outputs],
            )
            await conn.executemany(
                "INSERT INTO drv_inputs (drv_id, input_id, outputs) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(ids[d.path], ids[p], outs) for d in drvs for p, outs in d.input_drvs],
            )
            await conn.executemany(
                "INSERT INTO src_inputs (drv_id, path) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(ids[d.path], p) for d in drvs for p in d.input_srcs],
            )
            await conn.executemany(
                "UPDATE outputs SET path = ? WHERE drv_id = ? AND name = ? AND path IS NULL",
                [(path, ids[drv], name) for drv, name, path in realised],
            )
            await conn.execute(
                "INSERT INTO builds (event_id, drv_id, built_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (event_id, ids[build.drv_path], build.built_at),
            )
            await conn.executemany(
                "INSERT INTO build_outputs (event_id, name, path) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(event_id, name, path) for name, path in build.outputs],
            )
            await conn.execute(
                "UPDATE events SET state = 'indexed', error = NULL, indexed_at = ? WHERE id = ?",
                (now, event_id),
            )

    # -- git refs and their sources

    async def revisions_with_sources(self, repo_name: str, revs: Iterable[str]) -> set[str]:
        rows = await self._rows_in(
            "SELECT DISTINCT v.rev FROM revisions v JOIN repositories r ON r.id = v.repo_id"
            " JOIN sources s ON s.rev_id = v.id WHERE r.name = ? AND v.rev IN ({marks})",
            revs, [repo_name])
        return {rev for (rev,) in rows}

    async def record_refs(self, name: str, path: str, url: str | None, refs: dict[str, str],
                          revisions: Sequence[RevisionRow], complete: bool) -> list[tuple[str, str | None]]:
        """Store new revisions with their sources and every ref whose target changed since it was
        last seen (with ``complete``, refs no longer there are recorded as deleted). Returns the
        moves recorded: (ref, new rev or None)."""
        now = time.time()
        moves: list[tuple[str, str | None]] = []
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO repositories (name, path, url) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET path = excluded.path, url = excluded.url",
                (name, path, url),
            )
            repo_id = (await self._rows("SELECT id FROM repositories WHERE name = ?", (name,)))[0][0]
            await conn.executemany(
                "INSERT INTO revisions (repo_id, rev, commit_time) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(repo_id, r.rev, r.commit_time) for r in revisions],
            )
            # only the revisions this pass names, however long the repository's history
            rev_ids = dict(await self._rows_in(
                "SELECT rev, id FROM revisions WHERE repo_id = ? AND rev IN ({marks})",
                {*refs.values(), *(r.rev for r in revisions)}, [repo_id]))
            await conn.executemany(
                "INSERT INTO sources (rev_id, subdir, rule, nar_hash, store_path) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [(rev_ids[r.rev], s.subdir, s.rule, s.nar_hash, s.store_path)
                 for r in revisions for s in r.sources],
            )
            current = {
                ref: rev for ref, rev in await self._rows(
                    "SELECT m.ref, v.rev FROM ref_moves m LEFT JOIN revisions v ON v.id = m.rev_id"
                    " WHERE m.id IN (SELECT max(id) FROM ref_moves WHERE repo_id = ? GROUP BY ref)",
                    (repo_id,))
            }
            for ref, rev in sorted(refs.items()):
                if current.get(ref) != rev:
                    moves.append((ref, rev))
            if complete:
                gone = [ref for ref, rev in sorted(current.items()) if rev is not None and ref not in refs]
                moves.extend((ref, None) for ref in gone)
            await conn.executemany(
                "INSERT INTO ref_moves (repo_id, ref, rev_id, seen_at) VALUES (?, ?, ?, ?)",
                [(repo_id, ref, rev_ids.get(rev) if rev else None, now) for ref, rev in moves],
            )
        return moves

    async def record_lock(self, lock_file: str,
                          inputs: Sequence[tuple[str, str, str, str | None, str | None, str, str]]) -> None:
        """Replace what is known of one flake.lock: (input, type, location, ref, rev, narHash,
        storePath) per locked input."""
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM locked_inputs WHERE lock_file = ?", (lock_file,))
            await conn.executemany(
                "INSERT INTO locked_inputs"
                " (lock_file, input, type, location, ref, rev, nar_hash, store_path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(lock_file, *row) for row in inputs])

    async def locked_inputs_of(self, paths: Sequence[str], hashes: Sequence[str]) -> list[dict[str, Any]]:
        """Locked flake inputs whose source is among ``paths`` or whose hash is among ``hashes``."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for column, values in (("store_path", paths), ("nar_hash", hashes)):
            for p, h, loc, t, ref, rev, lock, inp in await self._rows_in(
                    "SELECT store_path, nar_hash, location, type, ref, rev, lock_file, input"
                    f" FROM locked_inputs WHERE {column} IN ({{marks}})", values):
                found[(lock, inp)] = {"storePath": p, "narHash": h, "repository": loc, "type": t,
                                      "ref": ref, "rev": rev, "lockFile": lock, "input": inp}
        return [found[k] for k in sorted(found)]

    async def ref_history(self, name: str) -> list[dict[str, Any]] | None:
        rows = await self._rows("SELECT id FROM repositories WHERE name = ?", (name,))
        if not rows:
            return None
        history = await self._rows(
            "SELECT m.ref, v.rev, m.seen_at FROM ref_moves m LEFT JOIN revisions v ON v.id = m.rev_id"
            " WHERE m.repo_id = ? ORDER BY m.ref, m.id", (rows[0][0],))
        return [{"ref": ref, "rev": rev, "seenAt": seen} for ref, rev, seen in history]

    # -- matching builds and revisions (lookups)

    async def repository_id(self, name: str) -> int | None:
        rows = await self._rows("SELECT id FROM repositories WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    async def ref_target(self, repo_id: int, names: Sequence[str], at: float) -> tuple[str, str] | None:
        """(ref, rev) of the first of ``names`` that pointed at a revision at time ``at``."""
        for name in names:
            rows = await self._rows(
                "SELECT v.rev FROM ref_moves m LEFT JOIN revisions v ON v.id = m.rev_id"
                " WHERE m.repo_id = ? AND m.ref = ? AND m.seen_at <= ? ORDER BY m.seen_at DESC, m.id DESC"
                " LIMIT 1",
                (repo_id, name, at))
            if rows and rows[0][0] is not None:
                return name, rows[0][0]
        return None

    async def revs_with_prefix(self, repo_id: int, prefix: str) -> list[str]:
        rows = await self._rows("SELECT rev FROM revisions WHERE repo_id = ? AND rev >= ? AND rev < ?",
                                (repo_id, prefix, prefix + "g"))
        return [rev for (rev,) in rows]

    async def revision_sources(self, repo_id: int, rev: str) -> list[tuple[str, str, str, str]]:
        """(subdir, rule, narHash, storePath) of a recorded revision."""
        return [tuple(r) for r in await self._rows(
            "SELECT s.subdir, s.rule, s.nar_hash, s.store_path FROM sources s"
            " JOIN revisions v ON v.id = s.rev_id"
            " WHERE v.repo_id = ? AND v.rev = ? ORDER BY s.rule, s.subdir", (repo_id, rev))]

    async def repository_users(self, repo_id: int, max_distance: int) -> dict[int, int]:
        """As :meth:`users`, for the sources of every recorded revision of a repository."""
        rows = await self._rows(
            "WITH RECURSIVE users (drv_id, distance) AS ("
            " SELECT i.drv_id, 0 FROM src_inputs i JOIN sources s ON s.store_path = i.path"
            " JOIN revisions v ON v.id = s.rev_id WHERE v.repo_id = ?"
            " UNION SELECT d.id, 0 FROM derivations d JOIN sources s ON s.nar_hash = d.fixed_hash"
            " JOIN revisions v ON v.id = s.rev_id WHERE v.repo_id = ? AND d.fixed_mode = 'recursive'"
            " UNION SELECT e.drv_id, u.distance + 1 FROM drv_inputs e JOIN users u ON e.input_id = u.drv_id"
            " WHERE u.distance < ?)"
            " SELECT drv_id, min(distance) FROM users GROUP BY drv_id",
            (repo_id, repo_id, max_distance))
        return dict(rows)

    async def users(self, store_paths: Sequence[str], nar_hashes: Sequence[str], max_distance: int
                    ) -> dict[int, int]:
        """Derivation id -> distance for derivations that use one of ``store_paths`` as an input
        source, or are fixed-output derivations whose recursive hash is one of ``nar_hashes``
        (distance 0), and those that depend on them (distance = steps up the closure graph)."""
        if not store_paths and not nar_hashes:
            return {}
        paths = ",".join("?" * len(store_paths)) or "NULL"
        hashes = ",".join("?" * len(nar_hashes)) or "NULL"
        rows = await self._rows(
            "WITH RECURSIVE users (drv_id, distance) AS ("
            f" SELECT drv_id, 0 FROM src_inputs WHERE path IN ({paths})"
            " UNION SELECT id, 0 FROM derivations WHERE fixed_mode = 'recursive'"
            f" AND fixed_hash IN ({hashes})"
            " UNION SELECT e.drv_id, u.distance + 1 FROM drv_inputs e JOIN users u ON e.input_id = u.drv_id"
            " WHERE u.distance < ?)"
            " SELECT drv_id, min(distance) FROM users GROUP BY drv_id",
            [*store_paths, *nar_hashes, max_distance])
        return dict(rows)

    async def builds_of(self, drv_ids: Sequence[int]) -> list[dict[str, Any]]:
        """The newest build of each derivation in ``drv_ids`` that has one."""
        rows = await self._rows_in(
            "SELECT b.drv_id, d.path, d.name, max(b.built_at), b.event_id FROM builds b"
            " JOIN derivations d ON d.id = b.drv_id WHERE b.drv_id IN ({marks}) GROUP BY b.drv_id", drv_ids)
        outputs = await self._outputs_of(row[4] for row in rows)
        return [{"drvId": drv_id, "drvPath": path, "name": name, "builtAt": built_at,
                 "outputs": outputs[event_id]} for drv_id, path, name, built_at, event_id in rows]

    async def built_output(self, path: str) -> tuple[int, str, str, float] | None:
        """(drv id, drv path, output name, built at) of the newest build that produced ``path``."""
        rows = await self._rows(
            "SELECT b.drv_id, d.path, o.name, b.built_at FROM build_outputs o"
            " JOIN builds b ON b.event_id = o.event_id JOIN derivations d ON d.id = b.drv_id"
            " WHERE o.path = ? ORDER BY b.built_at DESC LIMIT 1", (path,))
        return tuple(rows[0]) if rows else None

    async def closure_inputs(self, drv_id: int) -> tuple[list[str], list[str]]:
        """The input sources, and the recursive fixed-output hashes, used anywhere in the closure
        of a derivation (itself included)."""
        ids = [i for (i,) in await self._rows(
            "WITH RECURSIVE closure (id) AS (SELECT ?"
            " UNION SELECT e.input_id FROM drv_inputs e JOIN closure c ON e.drv_id = c.id)"
            " SELECT id FROM closure", (drv_id,))]
        # by key, not joined to the closure: a join the planner misjudged cost 5 ms here
        paths = await self._rows_in("SELECT path FROM src_inputs WHERE drv_id IN ({marks})", ids)
        hashes = await self._rows_in(
            "SELECT fixed_hash FROM derivations WHERE id IN ({marks}) AND fixed_mode = 'recursive'", ids)
        return sorted({p for (p,) in paths}), sorted({h for (h,) in hashes})

    async def recorded_sources(self, paths: Sequence[str], hashes: Sequence[str]
                              ) -> list[tuple[str, str, str, str, str, int, str]]:
        """Recorded revision sources among input source ``paths`` or with one of the fixed-output
        ``hashes``: (storePath, repository, rev, subdir, rule, revision id, narHash)."""
        found: set[tuple[str, str, str, str, str, int, str]] = set()
        for column, values in (("store_path", paths), ("nar_hash", hashes)):
            rows = await self._rows_in(
                "SELECT s.store_path, r.name, v.rev, s.subdir, s.rule, v.id, s.nar_hash FROM sources s"
                " JOIN revisions v ON v.id = s.rev_id JOIN repositories r ON r.id = v.repo_id"
                f" WHERE s.{column} IN ({{marks}})", values)
            found.update(tuple(r) for r in rows)
        return sorted(found)

    async def refs_at(self, rev_id: int, at: float | None) -> list[str]:
        """Refs whose latest move (up to ``at``; None: now) points at revision ``rev_id``."""
        # Only refs that ever pointed at the revision can point at it now; each is checked by its
        # latest move up to ``at`` (both by index, whatever the length of the history).
        rows = await self._rows(
            "SELECT c.ref FROM (SELECT DISTINCT repo_id, ref FROM ref_moves WHERE rev_id = ?) c"
            " WHERE (SELECT m.rev_id FROM ref_moves m WHERE m.repo_id = c.repo_id AND m.ref = c.ref"
            " AND m.seen_at <= ? ORDER BY m.seen_at DESC, m.id DESC LIMIT 1) = ?",
            (rev_id, at if at is not None else float("inf"), rev_id))
        return sorted(ref for (ref,) in rows)

    # -- queries

    async def event_counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in EventState}
        for state, n in await self._rows("SELECT state, count(*) FROM events GROUP BY state"):
            counts[state] = n
        return counts

    async def last_event(self) -> dict[str, Any] | None:
        rows = await self._rows(
            "SELECT id, drv, t, received_at, source, state, error FROM events ORDER BY id DESC LIMIT 1"
        )
        if not rows:
            return None
        i, drv, t, received, source, state, error = rows[0]
        return {"id": i, "drvPath": drv, "t": t, "receivedAt": received, "source": source, "state": state,
                "error": error}

    async def events_for(self, keys: Sequence[tuple[str, float]]) -> list[tuple[str, float, str, str | None]]:
        """(drv, t, state, error) of the events with these keys that exist."""
        found = []
        for drv, t in keys:
            found.extend(await self._rows("SELECT drv, t, state, error FROM events WHERE drv = ? AND t = ?",
                                          (drv, t)))
        return [(d, t, s, e) for d, t, s, e in found]

    async def builds(self, since: float, limit: int) -> list[dict[str, Any]]:
        rows = await self._rows(
            "SELECT b.event_id, d.path, d.name, d.system, b.built_at FROM builds b"
            " JOIN derivations d ON d.id = b.drv_id WHERE b.built_at >= ?"
            " ORDER BY b.built_at DESC, b.event_id DESC LIMIT ?",
            (since, limit),
        )
        outputs = await self._outputs_of(row[0] for row in rows)
        return [{"drvPath": path, "name": name, "system": system, "builtAt": built_at,
                 "outputs": outputs[event_id]} for event_id, path, name, system, built_at in rows]

    async def counts(self) -> dict[str, int]:
        result = {}
        for table in ("derivations", "outputs", "builds"):
            rows = await self._rows(f"SELECT count(*) FROM {table}")  # fixed names
            result[table] = rows[0][0]
        return result

    def size(self) -> int:
        """Bytes on disk, write-ahead log included."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(self.path + suffix).st_size
        return total
