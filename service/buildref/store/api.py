"""The index behind a few narrow interfaces: what the ingest pipeline writes (event log, build
index), what the source recorder writes (source index), and what queries read (a reader: one
consistent snapshot, never a write). Backends implement these; nothing above them writes SQL.

The records here are the storage boundary's data; what goes on the wire is in ``buildref.models``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from buildref.models import (
    Build,
    DerivationInfo,
    Event,
    EventCounts,
    EventState,
    LockedInput,
    RefChange,
    RefMove,
)

# -- records


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A hook event as it arrives; ``error`` set when it was malformed (kept, already failed)."""

    drv: str
    outs: tuple[str, ...]
    t: float
    source: str  # socket | spool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PendingEvent:
    id: int
    drv: str
    outs: tuple[str, ...]
    t: float


@dataclass(frozen=True, slots=True)
class DerivationRecord:
    """One derivation as the indexer read it from the store."""

    path: str
    name: str
    system: str
    fixed_mode: str | None  # flat | recursive | text, for fixed-output derivations
    fixed_hash: str | None  # SRI
    modulo: str  # hashDerivationModulo, encoded: later closures stop here without reading it
    outputs: tuple[tuple[str, str | None], ...]  # None until built: floating, impure, deferred
    input_drvs: tuple[tuple[str, str], ...]  # (path, outputs used, space separated)
    input_srcs: tuple[str, ...]
    rev_hint: str | None = None  # a git revision the derivation itself names (fetchgit's rev, ...)
    path_hint: str | None = None  # the file of that revision a flat fixed output names (a raw URL)


@dataclass(frozen=True, slots=True)
class Realised:
    """An output whose path became known only when it was built (floating, deferred)."""

    drv: str
    output: str
    path: str


@dataclass(frozen=True, slots=True)
class BuildRecord:
    """An indexed event: the build, the derivations of its closure new to the index, and the
    outputs that became known when it was built."""

    event_id: int
    drv_path: str
    built_at: float
    outputs: tuple[tuple[str, str], ...]  # only outputs present in the store
    new: tuple[DerivationRecord, ...] = ()
    realised: tuple[Realised, ...] = ()
    contents: tuple[str, ...] = ()  # store paths whose content is to be learnt (sources, fixed outputs)
    builder: str | None = None  # the recording service's ``builder``; a shared index requires one


class ContentState(Enum):
    PENDING = "pending"
    DONE = "done"  # hashed, and its form computed
    GONE = "gone"  # not in the store (any more)
    LARGE = "large"  # hashed; too large for its form to be computed
    FAILED = "failed"  # unreadable: ``error`` says why


@dataclass(frozen=True, slots=True)
class ContentRecord:
    """What a store path (an input source, a fixed-output derivation's output) holds."""

    path: str
    state: ContentState
    nar_hash: str | None = None  # SRI, as the store records it
    nar_size: int | None = None
    form: bytes | None = None  # git id of its form (buildref.git.forms)
    files: int | None = None
    identifying: bool = False
    error: str | None = None
    dirs: tuple[tuple[str, bytes], ...] = ()  # (subdirectory, form) of its identifying subdirectories
    samples: tuple[tuple[str, bytes], ...] = ()  # (file, blob id) of a sample of its files


@dataclass(frozen=True, slots=True)
class TreeRecord:
    """A directory of a recorded revision as Nix copies it (content-addressed: one row per form)."""

    form: bytes
    raw: bytes | None  # the git tree it is formed from, when not the same id
    nar_hash: str
    nar_size: int
    files: int
    identifying: bool


@dataclass(frozen=True, slots=True)
class RevisionRecord:
    rev: str
    commit_time: int
    root_export_ignore: bytes | None  # form of the root under each rule (None: not computed)
    root_raw: bytes | None


@dataclass(frozen=True, slots=True)
class RepositoryRecord:
    name: str
    path: str
    url: str | None
    recorded_by: str | None = "config"  # "config", or the uid that had it recorded
    # the builder whose machine ``path`` is on: a fleet's shared index keeps it (a path on one
    # builder means nothing on another); a single machine's index may leave it out
    builder: str | None = None


@dataclass(frozen=True, slots=True)
class RepositoryInfo:
    id: int
    name: str
    path: str
    url: str | None
    recorded_by: str | None
    builder: str | None = None  # whose machine ``path`` is on (None: this one)


@dataclass(frozen=True, slots=True)
class SourceUsage:
    """What the repositories one recorder (``config`` or a uid) recorded take in the index."""

    repositories: int
    rows: int  # revisions, ref moves and directory forms


@dataclass(frozen=True, slots=True)
class RevisionInfo:
    id: int
    repo_id: int
    rev: str
    commit_time: int
    root_export_ignore: bytes | None
    root_raw: bytes | None


@dataclass(frozen=True, slots=True)
class FlatFixed:
    """A flat fixed-output derivation that names one file of a revision (a raw file from a forge)."""

    drv_id: int
    fixed_hash: str  # SRI, of the file's contents
    rev: str
    path: str
    output: str | None  # its output path


@dataclass(frozen=True, slots=True)
class ClosureItem:
    """Content a derivation's closure used: an input source, or a fixed-output derivation (by its
    declared hash, and its output path when known); ``distance`` steps down from the derivation."""

    path: str | None
    distance: int
    fixed_hash: str | None = None  # fixed-output hash (SRI): recursive, or flat with ``path_hint``
    rev_hint: str | None = None
    path_hint: str | None = None  # set: a flat fixed output of that one file of ``rev_hint``


@dataclass(frozen=True, slots=True)
class LockRecord:
    """One locked input of a flake.lock that has a narHash."""

    input: str  # input path from the root, joined by "/"
    type: str
    location: str  # url, or owner/repo
    ref: str | None
    rev: str | None
    nar_hash: str
    store_path: str  # <narHash>-source


@dataclass(frozen=True, slots=True)
class IndexedBuild:
    """The newest build of a derivation, with the derivation's id for joins."""

    drv_id: int
    build: Build


@dataclass(frozen=True, slots=True)
class BuiltOutput:
    drv_id: int
    drv_path: str
    output: str
    built_at: float
    builder: str | None = None


@dataclass(frozen=True, slots=True)
class TableCounts:
    derivations: int
    outputs: int
    builds: int


# -- what the ingest pipeline writes


class EventLog(Protocol):
    async def append(self, events: Sequence[NewEvent]) -> None:
        """Commit a group of events in one transaction; the same (drv, t) twice is one event."""

    async def pending(self, limit: int) -> list[PendingEvent]: ...

    async def fail(self, event_id: int, error: str) -> None: ...


class BuildIndex(Protocol):
    async def record(self, builds: Sequence[BuildRecord]) -> None:
        """In one transaction, for each build: its new derivations, the outputs now known, the
        build, its event marked indexed, and the store paths whose content is still to learn.
        Idempotent: a build recorded again (the same builder, derivation and time) is one build."""

    async def pending_contents(self, limit: int) -> list[str]: ...

    async def record_contents(self, contents: Sequence[ContentRecord]) -> None: ...


# -- what the source recorder writes


class SourceIndex(Protocol):
    async def record_revisions(self, repo: RepositoryRecord, revisions: Sequence[RevisionRecord],
                               forms: Collection[bytes], trees: Sequence[TreeRecord],
                               moves: Sequence[RefChange]) -> None:
        """In one transaction: the repository, new revisions with their root forms, the forms of
        all their directories (the repository's own list), those forms' trees not known yet (kept
        once, whichever repository has them), and ref moves."""

    async def replace_lock(self, lock_file: str, inputs: Sequence[LockRecord]) -> None:
        """Replace everything known of one flake.lock."""


# -- what queries read, from one snapshot


class EventQueries(Protocol):
    async def counts(self) -> EventCounts: ...

    async def last(self) -> Event | None: ...

    async def by_keys(self, keys: Sequence[tuple[str, float]]) -> list[Event]: ...

    async def newest(self, state: EventState | None, limit: int) -> list[Event]: ...

    async def oldest_pending(self) -> float | None:
        """When the oldest event still to index was received (None: none is)."""


class BuildQueries(Protocol):
    async def known_modulo(self, paths: Collection[str]) -> dict[str, str]:
        """The stored modulo hash of each of ``paths`` already in the index."""

    async def recent(self, since: float, limit: int) -> list[Build]: ...

    async def newest_builds(self, drv_ids: Collection[int]) -> list[IndexedBuild]:
        """The newest build of each derivation among ``drv_ids`` that has one."""

    async def producer(self, path: str) -> BuiltOutput | None:
        """The newest build that produced output ``path``."""

    async def closure(self, drv_id: int) -> list[ClosureItem]:
        """Every input source and recursive fixed-output derivation in a derivation's closure,
        each at its least distance from it."""

    async def derivations_using(self, store_paths: Collection[str], nar_hashes: Collection[str],
                                max_distance: int, drv_ids: Collection[int] = ()) -> dict[int, int]:
        """Derivation id -> distance for derivations that use one of ``store_paths`` (as an input
        source, or as the output of a recursive fixed-output derivation, which then counts itself),
        or are recursive fixed-output derivations whose hash is one of ``nar_hashes``, or are among
        ``drv_ids`` (0), and those above them in the closure graph (one per step)."""

    async def contents(self, paths: Collection[str]) -> dict[str, ContentRecord]: ...

    async def contents_with_forms(self, forms: Collection[bytes]) -> list[ContentRecord]: ...

    async def contents_with_hashes(self, nar_hashes: Collection[str]) -> list[ContentRecord]: ...

    async def contents_with_dirs(self, forms: Collection[bytes]) -> list[tuple[str, str, bytes]]:
        """(content, subdirectory, form) for contents with a subdirectory of one of ``forms``."""

    async def dirs_of(self, paths: Collection[str]) -> dict[str, list[tuple[str, bytes]]]:
        """Each content's identifying subdirectories: (subdirectory, form)."""

    async def contents_sampled(self, blobs: Collection[bytes]) -> dict[str, list[tuple[str, bytes]]]:
        """Contents with a sampled file among ``blobs``, each with all its samples (file, blob)."""

    async def samples_of(self, paths: Collection[str]) -> dict[str, list[tuple[str, bytes]]]: ...

    async def flat_fixed(self, rev: str) -> list[FlatFixed]:
        """Flat fixed-output derivations that name a file of revision ``rev``."""

    async def content_backlog(self) -> int:
        """How many store paths' contents are still to learn."""

    async def derivation(self, path: str) -> DerivationInfo | None: ...

    async def table_counts(self) -> TableCounts: ...


class SourceQueries(Protocol):
    async def repository(self, name: str) -> RepositoryInfo | None: ...

    async def repositories(self) -> list[RepositoryInfo]: ...

    async def usage(self, recorded_by: str) -> SourceUsage:
        """What the repositories recorded by ``recorded_by`` take (for per-user quotas)."""

    async def current_refs(self, repo_id: int) -> dict[str, str | None]:
        """Each ref's latest recorded target (None: deleted)."""

    async def revisions(self, repo_id: int, revs: Collection[str]) -> dict[str, RevisionInfo]:
        """The recorded ones among ``revs``."""

    async def revisions_with_roots(self, forms: Collection[bytes]) -> list[RevisionInfo]:
        """Recorded revisions (of any repository) whose root, under either rule, has one of ``forms``."""

    async def ref_target(self, repo_id: int, names: Sequence[str], at: float) -> tuple[str, str] | None:
        """(ref, rev) of the first of ``names`` that pointed at a revision at time ``at``."""

    async def revs_with_prefix(self, repo_id: int, prefix: str) -> list[str]: ...

    async def trees(self, forms: Collection[bytes]) -> dict[bytes, TreeRecord]: ...

    async def trees_with_hash(self, nar_hash: str) -> list[TreeRecord]: ...

    async def repository_forms(self, repo_id: int) -> list[bytes]:
        """Forms of every directory of every recorded revision of a repository."""

    async def refs_at(self, repo_id: int, rev: str, at: float | None) -> list[str]:
        """Refs whose latest move (up to ``at``; None: now) points at ``rev``."""

    async def locked_inputs(self, paths: Collection[str], hashes: Collection[str]) -> list[LockedInput]: ...

    async def ref_history(self, repo_id: int) -> list[RefMove]: ...


@dataclass(frozen=True, slots=True)
class UploadItem:
    path: str
    attempts: int  # copies tried and failed so far


@dataclass(frozen=True, slots=True)
class UploadCounts:
    pending: int  # waiting for a first copy, or to be tried alone after a failed batch
    done: int
    failed: int  # whose last copy, tried alone, failed (tried again later)
    dropped: int  # gone from the store before they could be copied


class UploadQueue(Protocol):
    """Paths to copy to the upload target, durable: kept on this machine, whatever the index."""

    async def enqueue(self, paths: Collection[str], now: float) -> None:
        """Queue ``paths`` (a path already queued or copied is left as it is)."""

    async def due(self, now: float, limit: int) -> list[UploadItem]:
        """Up to ``limit`` paths whose copy is due, oldest first."""

    async def next_due(self, now: float) -> float | None:
        """Seconds until the next path is due (0 when one is); None when none waits."""

    async def done(self, paths: Collection[str], now: float) -> None: ...

    async def failed(self, retries: Mapping[str, tuple[int, float]], error: str, now: float,
                     alone: bool) -> None:
        """Each path's attempts so far and when to try it again; ``alone``: it failed on its own
        (else it was in a batch that failed, and is only to be tried alone)."""

    async def dropped(self, paths: Collection[str], now: float) -> None: ...

    async def counts(self) -> UploadCounts: ...


class Reader(Protocol):
    """One consistent snapshot of the index: sees only committed data, never writes."""

    @property
    def events(self) -> EventQueries: ...

    @property
    def builds(self) -> BuildQueries: ...

    @property
    def sources(self) -> SourceQueries: ...


class Store(Protocol):
    @property
    def events(self) -> EventLog: ...

    @property
    def builds(self) -> BuildIndex: ...

    @property
    def sources(self) -> SourceIndex: ...

    @property
    def uploads(self) -> UploadQueue:
        """This machine's upload queue (local even when the index is shared)."""

    @property
    def location(self) -> str:
        """Where the index is, for people (a file path, a database URL without its password)."""

    def reading(self) -> AbstractAsyncContextManager[Reader, bool | None]:
        """A reader over one snapshot, for the duration of the block."""

    def size(self) -> int:
        """Bytes on disk, or -1 when the backend cannot tell cheaply."""

    async def close(self) -> None: ...
