"""The PostgreSQL schema as a list of migrations, counted in the table ``buildref_schema``.

Many services share one database and may start at once: migrations run in one transaction under
an advisory lock, so exactly one of them applies each and the others find it done.
Text that is compared or ordered is ``COLLATE "C"`` (bytes, as SQLite compares), whatever the
database's own collation.
"""

from __future__ import annotations

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from buildref.errors import StorageError

_LOCK = 0x6275696C64726566  # "buildref": the advisory lock that serialises migrations

_FIRST = """
CREATE TABLE derivations (
    id BIGSERIAL PRIMARY KEY,
    path TEXT COLLATE "C" NOT NULL UNIQUE,
    name TEXT COLLATE "C" NOT NULL,
    system TEXT NOT NULL,
    fixed_mode TEXT,              -- flat | recursive | text, for fixed-output derivations
    fixed_hash TEXT COLLATE "C",  -- SRI
    modulo TEXT NOT NULL,         -- hashDerivationModulo, so later closures need not re-read it
    first_seen DOUBLE PRECISION NOT NULL,
    rev_hint TEXT COLLATE "C",    -- a git revision the derivation names (fetchgit's rev, ...)
    path_hint TEXT                -- the file of that revision a flat fixed output names (a raw URL)
);
CREATE INDEX derivations_rev_hint ON derivations (rev_hint)
    WHERE fixed_mode = 'flat' AND path_hint IS NOT NULL;
CREATE INDEX derivations_fixed ON derivations (fixed_hash) WHERE fixed_mode = 'recursive';
CREATE TABLE outputs (
    drv_id BIGINT NOT NULL REFERENCES derivations (id),
    name TEXT COLLATE "C" NOT NULL,
    path TEXT COLLATE "C",        -- NULL until built for floating, impure and deferred outputs
    PRIMARY KEY (drv_id, name)
);
CREATE INDEX outputs_path ON outputs (path);
CREATE TABLE drv_inputs (
    drv_id BIGINT NOT NULL REFERENCES derivations (id),
    input_id BIGINT NOT NULL REFERENCES derivations (id),
    outputs TEXT NOT NULL,        -- the input's outputs used, space separated
    PRIMARY KEY (drv_id, input_id)
);
CREATE INDEX drv_inputs_input ON drv_inputs (input_id);
CREATE TABLE src_inputs (
    drv_id BIGINT NOT NULL REFERENCES derivations (id),
    path TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (drv_id, path)
);
CREATE INDEX src_inputs_path ON src_inputs (path);
CREATE TABLE builds (
    id BIGSERIAL PRIMARY KEY,
    builder TEXT COLLATE "C" NOT NULL,  -- the recording service's `builder`
    drv_id BIGINT NOT NULL REFERENCES derivations (id),
    built_at DOUBLE PRECISION NOT NULL, -- when the hook ran
    recorded_at DOUBLE PRECISION NOT NULL,
    UNIQUE (builder, drv_id, built_at)  -- one build however often its event is shipped
);
CREATE INDEX builds_drv ON builds (drv_id, built_at);
CREATE INDEX builds_time ON builds (built_at);
CREATE TABLE build_outputs (
    build_id BIGINT NOT NULL REFERENCES builds (id),
    name TEXT COLLATE "C" NOT NULL,
    path TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (build_id, name)
);
CREATE INDEX build_outputs_path ON build_outputs (path);
CREATE TABLE contents (
    path TEXT COLLATE "C" PRIMARY KEY,  -- an input source, or a fixed-output derivation's output
    state TEXT NOT NULL,          -- pending | done | gone | large | failed
    nar_hash TEXT COLLATE "C",    -- SRI, as the store records it
    nar_size BIGINT,
    form BYTEA,                   -- git id of its form (buildref.git.forms); NULL: not computed
    files BIGINT,
    identifying BOOLEAN,
    error TEXT,
    queued_by TEXT COLLATE "C"    -- the builder that learns it (it has the path in its store)
);
CREATE INDEX contents_form ON contents (form) WHERE form IS NOT NULL;
CREATE INDEX contents_hash ON contents (nar_hash);
CREATE INDEX contents_pending ON contents (queued_by, path) WHERE state = 'pending';
CREATE TABLE content_dirs (       -- a learnt content's identifying subdirectories
    form BYTEA NOT NULL,
    path TEXT COLLATE "C" NOT NULL,    -- the content (a store path)
    subdir TEXT COLLATE "C" NOT NULL,  -- the directory of it that has the form
    PRIMARY KEY (form, path, subdir)
);
CREATE INDEX content_dirs_path ON content_dirs (path);
CREATE TABLE content_samples (    -- a sample of a learnt content's files
    blob BYTEA NOT NULL,               -- git blob id of a sampled file
    path TEXT COLLATE "C" NOT NULL,    -- the content (a store path)
    file TEXT COLLATE "C" NOT NULL,    -- the file's path in it
    PRIMARY KEY (blob, path, file)
);
CREATE INDEX content_samples_path ON content_samples (path);
CREATE TABLE repositories (
    id BIGSERIAL PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    path TEXT NOT NULL,
    url TEXT,
    recorded_by TEXT,             -- 'config', or the uid that had it recorded
    builder TEXT                  -- the builder that recorded it last: `path` is on its machine
);
CREATE TABLE revisions (
    id BIGSERIAL PRIMARY KEY,
    repo_id BIGINT NOT NULL REFERENCES repositories (id),
    rev TEXT COLLATE "C" NOT NULL,
    commit_time BIGINT NOT NULL,
    root_export_ignore BYTEA,     -- form of the root under each rule (NULL: not computed)
    root_raw BYTEA,
    UNIQUE (repo_id, rev)
);
CREATE INDEX revisions_root_export_ignore ON revisions (root_export_ignore);
CREATE INDEX revisions_root_raw ON revisions (root_raw);
CREATE TABLE ref_moves (
    id BIGSERIAL PRIMARY KEY,
    repo_id BIGINT NOT NULL REFERENCES repositories (id),
    ref TEXT COLLATE "C" NOT NULL,
    rev_id BIGINT REFERENCES revisions (id),  -- NULL: the ref was deleted
    seen_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX ref_moves_ref ON ref_moves (repo_id, ref, id);
CREATE INDEX ref_moves_time ON ref_moves (repo_id, ref, seen_at, id);
CREATE INDEX ref_moves_rev ON ref_moves (rev_id);
CREATE TABLE trees (
    form BYTEA PRIMARY KEY,       -- git id of a recorded revision's directory as Nix copies it
    raw BYTEA,                    -- the git tree it is formed from, when not the same
    nar_hash TEXT COLLATE "C" NOT NULL,
    nar_size BIGINT NOT NULL,
    files BIGINT NOT NULL,
    identifying BOOLEAN NOT NULL
);
CREATE INDEX trees_hash ON trees (nar_hash);
CREATE TABLE repo_trees (         -- which repositories' recorded revisions have each form
    form BYTEA NOT NULL,
    repo_id BIGINT NOT NULL REFERENCES repositories (id),
    PRIMARY KEY (form, repo_id)
);
CREATE INDEX repo_trees_repo ON repo_trees (repo_id);
CREATE TABLE locked_inputs (
    lock_file TEXT COLLATE "C" NOT NULL,  -- a path, or <repository>@<rev>:flake.lock
    input TEXT COLLATE "C" NOT NULL,      -- input path from the root, joined by "/"
    type TEXT NOT NULL,
    location TEXT NOT NULL,       -- url, or owner/repo
    ref TEXT,
    rev TEXT,
    nar_hash TEXT COLLATE "C" NOT NULL,
    store_path TEXT COLLATE "C" NOT NULL,  -- <narHash>-source
    PRIMARY KEY (lock_file, input)
);
CREATE INDEX locked_inputs_path ON locked_inputs (store_path);
CREATE INDEX locked_inputs_hash ON locked_inputs (nar_hash);
"""

# Each entry is one migration; never edit one that has shipped, add another.
MIGRATIONS: tuple[str, ...] = (_FIRST,)


async def migrate(conn: PoolConnectionProxy[asyncpg.Record]) -> int:
    """Bring the database up to date; the version it is at now."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS buildref_schema ("
                           " version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        version = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM buildref_schema"))
        if version > len(MIGRATIONS):
            raise StorageError(f"the shared index is at schema version {version}, newer than this buildref "
                               f"({len(MIGRATIONS)}): upgrade buildref")
        for number in range(version + 1, len(MIGRATIONS) + 1):
            await conn.execute(MIGRATIONS[number - 1])
            await conn.execute("INSERT INTO buildref_schema (version) VALUES ($1)", number)
    return len(MIGRATIONS)
