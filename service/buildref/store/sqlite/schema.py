"""The SQLite schema as a list of migrations: ``PRAGMA user_version`` says how many have run.

Round one's databases predate the counter (``user_version`` 0, tables present): migration 1 is
round one's schema written with ``IF NOT EXISTS``, so it creates a new database and leaves a
round-one database as it is. Each later migration runs once, in its own transaction.
"""

from __future__ import annotations

import aiosqlite

from buildref.errors import BadConfig

_ROUND_ONE = """
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

# Each entry is one migration; never edit one that has shipped, add another.
MIGRATIONS: tuple[str, ...] = (
    _ROUND_ONE,
    # 2: newest events by state (`buildref events --state failed`) without a scan
    "CREATE INDEX IF NOT EXISTS events_state ON events (state, id);"
    " DELETE FROM meta WHERE key = 'schema_version';",
    # 3: match by content, for any commit. What each source a derivation used holds (its NAR
    # hash, from the store, and the git id of its form), and the forms of recorded revisions'
    # directories, stored once per distinct content instead of a row per directory per revision.
    # Revisions keep their root forms; per-revision source rows go (they are derived from git and
    # recomputed as repositories are recorded); every source already indexed is queued for hashing.
    """
    CREATE TABLE contents (
        path TEXT PRIMARY KEY,        -- an input source, or a fixed-output derivation's output
        state TEXT NOT NULL,          -- pending | done | gone | large | failed
        nar_hash TEXT,                -- SRI, as the store records it
        nar_size INTEGER,
        form BLOB,                    -- git id of its form (buildref.git.forms); NULL: not computed
        files INTEGER,
        identifying INTEGER,          -- 1: its content can name a revision
        error TEXT
    ) WITHOUT ROWID;
    CREATE INDEX contents_form ON contents (form) WHERE form IS NOT NULL;
    CREATE INDEX contents_hash ON contents (nar_hash);
    CREATE INDEX contents_pending ON contents (path) WHERE state = 'pending';
    CREATE TABLE trees (
        form BLOB PRIMARY KEY,        -- git id of a recorded revision's directory as Nix copies it
        raw BLOB,                     -- the git tree it is formed from, when not the same
        nar_hash TEXT NOT NULL,       -- SRI
        nar_size INTEGER NOT NULL,
        files INTEGER NOT NULL,
        identifying INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX trees_hash ON trees (nar_hash);
    CREATE TABLE repo_trees (         -- which repositories' recorded revisions have each form
        form BLOB NOT NULL,
        repo_id INTEGER NOT NULL REFERENCES repositories (id),
        PRIMARY KEY (form, repo_id)
    ) WITHOUT ROWID;
    CREATE INDEX repo_trees_repo ON repo_trees (repo_id);
    ALTER TABLE revisions ADD COLUMN root_export_ignore BLOB;
    ALTER TABLE revisions ADD COLUMN root_raw BLOB;
    ALTER TABLE repositories ADD COLUMN recorded_by TEXT;  -- 'config', or the uid that recorded it
    -- only configured repositories have plain names (a recorded path or URL is named by itself);
    -- who recorded the others before this column existed is not known: NULL
    UPDATE repositories SET recorded_by = 'config'
        WHERE name NOT LIKE '/%' AND name NOT LIKE '%://%' AND name NOT LIKE '%@%:%';
    ALTER TABLE derivations ADD COLUMN rev_hint TEXT;
    DROP TABLE sources;
    INSERT INTO contents (path, state) SELECT DISTINCT path, 'pending' FROM src_inputs
        WHERE path NOT LIKE '%.drv';
    INSERT OR IGNORE INTO contents (path, state)
        SELECT o.path, 'pending' FROM outputs o JOIN derivations d ON d.id = o.drv_id
        WHERE d.fixed_mode = 'recursive' AND o.path IS NOT NULL;
    """,
    # 4: partial matches. The forms of each learnt content's identifying subdirectories (a tree
    # vendored inside it, a submodule) and a sample of its files, by which candidate revisions are
    # found both ways; the file a flat fixed output names. Contents learnt before are learnt again.
    """
    CREATE TABLE content_dirs (
        form BLOB NOT NULL,
        path TEXT NOT NULL,           -- the content (a store path)
        subdir TEXT NOT NULL,         -- the directory of it that has the form
        PRIMARY KEY (form, path, subdir)
    ) WITHOUT ROWID;
    CREATE INDEX content_dirs_path ON content_dirs (path);
    CREATE TABLE content_samples (
        blob BLOB NOT NULL,           -- git blob id of a sampled file
        path TEXT NOT NULL,           -- the content (a store path)
        file TEXT NOT NULL,           -- the file's path in it
        PRIMARY KEY (blob, path, file)
    ) WITHOUT ROWID;
    CREATE INDEX content_samples_path ON content_samples (path);
    ALTER TABLE derivations ADD COLUMN path_hint TEXT;
    UPDATE contents SET state = 'pending' WHERE state = 'done';
    """,
    # 5: builds carry the ``builder`` of the service that recorded them. Builds recorded before
    # keep NULL: "this machine, before builders existed" (the setting then in force is not known).
    # And flat fixed outputs by the revision they name, by index: every lookup asks (a scan of
    # 500,000 derivations took 43 ms).
    "ALTER TABLE builds ADD COLUMN builder TEXT;"
    " CREATE INDEX derivations_rev_hint ON derivations (rev_hint)"
    " WHERE fixed_mode = 'flat' AND path_hint IS NOT NULL;",
    # 6: the upload queue ([upload] to): this machine's, whatever the index (a fleet's too).
    """
    CREATE TABLE uploads (
        path TEXT PRIMARY KEY,
        state TEXT NOT NULL,          -- pending | done | failed | dropped
        attempts INTEGER NOT NULL DEFAULT 0,
        due REAL NOT NULL,            -- when to try it (next)
        queued_at REAL NOT NULL,
        finished_at REAL,             -- copied, or dropped
        error TEXT                    -- of the last failed copy
    ) WITHOUT ROWID;
    CREATE INDEX uploads_due ON uploads (due) WHERE state IN ('pending', 'failed');
    """,
)


async def migrate(conn: aiosqlite.Connection) -> int:
    """Bring the database up to date; the version it is at now."""
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise BadConfig(f"the database is at schema version {version}, newer than this buildref "
                        f"({len(MIGRATIONS)}): upgrade buildref")
    for number in range(version + 1, len(MIGRATIONS) + 1):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[number - 1]):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {number}")  # a number of ours, never input
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    """``script`` split into statements (executescript would commit the migration's transaction);
    ``complete_statement`` keeps a ``;`` inside a string or comment from splitting one."""
    import sqlite3

    statements, current = [], ""
    for part in script.split(";"):
        current += part + ";"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s.strip(" \n;")]
