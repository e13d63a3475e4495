"""What crosses buildref's boundaries — requests, answers, builds, sources — as frozen dataclasses,
and the one place their JSON is spelled: a field ``drv_path`` is the wire key ``drvPath``.

``to_json`` and ``from_json`` come from :class:`Wire`, driven by the field types: requests are
checked as they are read (types here, bounds in ``__post_init__``), so the query socket and the
HTTP API validate with the same code, and the client gets models back, never dicts.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Self

from buildref.errors import BadRequest

MAX_TEXT = 4096  # characters in a path, a repository name or a hash given as a parameter
MAX_REF = 1024  # characters in a ref name or revision expression
# A --name pattern: at most this long, with at most so many '*'. Python's fnmatch compiles each '*'
# but the last to an atomic group, so matching is linear in the name per '*'; the last '*' before
# a literal tail is the worst (name length x tail length): about 40 us for a 207-character name.
MAX_GLOB = 200
MAX_GLOB_STARS = 8
MAX_KEYS = 10_000  # events asked about in one request
MAX_LIMIT = 100_000


@functools.lru_cache(maxsize=256)
def glob(pattern: str) -> re.Pattern[str]:
    """A ``name`` pattern (fnmatch, case-sensitive), compiled once; checked for its bounds first."""
    _text(pattern, "name", MAX_GLOB)
    if pattern.count("*") > MAX_GLOB_STARS:
        raise BadRequest(f"'name' may hold at most {MAX_GLOB_STARS} '*'")
    return re.compile(fnmatch.translate(pattern))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _shown(value: object) -> str:
    """A value for an error message: never the whole of what a client sent."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Wire:
    """Mixin for frozen dataclasses that go on the wire."""

    __slots__ = ()
    # Requests refuse keys they do not know (a misspelt parameter must not be silently ignored);
    # answers ignore them (a newer service may add some).
    strict: ClassVar[bool] = False

    def to_json(self) -> dict[str, Any]:
        return {key: dump(getattr(self, name)) for name, key in _keys(type(self))}

    @classmethod
    def from_json(cls, data: object, *, text: bool = False) -> Self:
        """The model in ``data``; ``text``: scalar values may be strings (HTTP query parameters).
        Unknown keys are ignored, missing required keys and wrong types are :class:`BadRequest`."""
        if not isinstance(data, Mapping):
            raise BadRequest(f"expected a JSON object, got {_shown(data)}")
        hints = _hints(cls)
        fields, known = _loading(cls)
        if cls.strict:
            unknown = sorted(set(data) - known)
            if unknown:
                raise BadRequest(f"unknown parameter {_shown(unknown[0])}")
        values: dict[str, Any] = {}
        for name, key, required in fields:
            if key in data and not (text and data[key] == ""):
                values[name] = _load(hints[name], data[key], key, text)
            elif required:
                raise BadRequest(f"'{key}' is missing")
        return cls(**values)


_KEYS: dict[type, tuple[tuple[str, str], ...]] = {}
_HINTS: dict[type, dict[str, Any]] = {}


def _keys(cls: type) -> tuple[tuple[str, str], ...]:
    keys = _KEYS.get(cls)
    if keys is None:
        keys = _KEYS[cls] = tuple((f.name, _camel(f.name)) for f in dataclasses.fields(cls))
    return keys


_LOADING: dict[type, tuple[tuple[tuple[str, str, bool], ...], frozenset[str]]] = {}


def _loading(cls: type) -> tuple[tuple[tuple[str, str, bool], ...], frozenset[str]]:
    """(name, key, required) of each field, and the set of keys: what from_json reads, once per model."""
    found = _LOADING.get(cls)
    if found is None:
        fields = tuple((f.name, key, _required(f))
                       for f, (_, key) in zip(dataclasses.fields(cls), _keys(cls), strict=True))
        found = _LOADING[cls] = (fields, frozenset(key for _, key, _ in fields))
    return found


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def dump(value: Any) -> Any:
    """A model (or list, dict of them) as JSON values."""
    if isinstance(value, Wire):
        return value.to_json()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value


_WHAT = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _load(hint: Any, value: Any, key: str, text: bool) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for candidate in inner[:-1]:  # the first type the value fits, in the order written
            try:
                return _load(candidate, value, key, text)
            except BadRequest:
                continue
        return _load(inner[-1], value, key, text)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise BadRequest(f"'{key}' must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_load(args[0], v, key, False) for v in value)
        if len(value) != len(args):
            raise BadRequest(f"'{key}' must be a list of {len(args)} items")
        return tuple(_load(a, v, key, False) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise BadRequest(f"'{key}' must be an object")
        return {k: _load(args[1], v, key, False) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Wire):
        return hint.from_json(value)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in hint)
            raise BadRequest(f"'{key}' must be one of {choices}") from None
    return _scalar(hint, value, key, text)


def _scalar(hint: Any, value: Any, key: str, text: bool) -> Any:
    if text and isinstance(value, str) and hint is not str:
        value = _parse_text(hint, value, key)
    if hint is Any:
        return value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, hint):
        return value
    raise BadRequest(f"'{key}' must be {_WHAT.get(hint, hint.__name__)}, got {_shown(value)}")


def _parse_text(hint: Any, value: str, key: str) -> Any:
    try:
        if hint is bool:
            return {"true": True, "false": False, "1": True, "0": False}[value.lower()]
        if hint is int:
            return int(value)
        if hint is float:
            return float(value)
    except (KeyError, ValueError):
        raise BadRequest(f"'{key}' must be {_WHAT.get(hint, hint.__name__)}, got {_shown(value)}") from None
    return value


def _text(value: str | None, key: str, limit: int = MAX_TEXT, required: bool = True) -> None:
    if value is None:
        return
    if required and not value:
        raise BadRequest(f"'{key}' must be a non-empty string")
    if len(value) > limit or "\0" in value:
        raise BadRequest(f"'{key}' must be at most {limit} characters, without NUL")


# -- requests


@dataclass(frozen=True, slots=True)
class NoParams(Wire):
    strict = True


@dataclass(frozen=True, slots=True)
class BuildsParams(Wire):
    strict = True

    since: float = 0.0
    limit: int = 100
    repo: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise BadRequest(f"'limit' must be between 1 and {MAX_LIMIT}")
        _text(self.repo, "repo")


class EventState(Enum):
    PENDING = "pending"
    INDEXED = "indexed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class EventsParams(Wire):
    """Events by key (drv, t) — what ``buildref import`` waits on — or the newest ones."""

    strict = True

    keys: tuple[tuple[str, float], ...] | None = None
    state: EventState | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        if self.keys is not None:
            if len(self.keys) > MAX_KEYS:
                raise BadRequest(f"'keys' must list at most {MAX_KEYS} events")
            for drv, _ in self.keys:
                _text(drv, "keys", MAX_TEXT)
        if not 1 <= self.limit <= MAX_LIMIT:
            raise BadRequest(f"'limit' must be between 1 and {MAX_LIMIT}")


@dataclass(frozen=True, slots=True)
class RepoParams(Wire):
    strict = True

    repo: str

    def __post_init__(self) -> None:
        _text(self.repo, "repo")


@dataclass(frozen=True, slots=True)
class RecordParams(Wire):
    strict = True

    repo: str
    refs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _text(self.repo, "repo")
        if self.refs is not None:
            if len(self.refs) > 1000:
                raise BadRequest("'refs' must list at most 1000 refs")
            for ref in self.refs:
                _text(ref, "refs", MAX_REF)


@dataclass(frozen=True, slots=True)
class LookupParams(Wire):
    strict = True

    repo: str
    ref: str
    at: float | None = None
    name: str | None = None  # a glob on derivation names
    direct: bool = False
    cached: bool = False  # only builds in the local store or a configured binary cache

    def __post_init__(self) -> None:
        _text(self.repo, "repo")
        _text(self.ref, "ref", MAX_REF)
        if self.name is not None:
            glob(self.name)


@dataclass(frozen=True, slots=True)
class WhatParams(Wire):
    strict = True

    what: str  # a store path or a NAR hash

    def __post_init__(self) -> None:
        _text(self.what, "what")


# -- answers


@dataclass(frozen=True, slots=True)
class Event(Wire):
    id: int
    drv_path: str
    t: float
    received_at: float
    source: str  # socket | spool
    state: EventState
    error: str | None


@dataclass(frozen=True, slots=True)
class Build(Wire):
    drv_path: str
    name: str
    system: str
    built_at: float
    outputs: dict[str, str]  # the outputs found in the store when it was indexed
    # the ``builder`` setting of the service that recorded it; None: recorded on this machine
    # before builds carried their builder
    builder: str | None
    # configured binary caches holding every output (narinfo and signature verified), and those
    # that could not say now (unreachable, failing, or not asked): never taken for "absent"
    caches: tuple[str, ...] = field(default=(), kw_only=True)
    caches_unknown: tuple[str, ...] = field(default=(), kw_only=True)


@dataclass(frozen=True, slots=True)
class MatchedBuild(Build):
    """A build found from a source: ``distance`` steps up the closure graph from the derivation
    that uses the source (0: itself); ``valid``: every output is still in the local store."""

    distance: int
    valid: bool


class Match(Enum):
    """How a store path's content relates to a revision's tree (or a directory of it)."""

    EXACT = "exact"  # the same tree
    FILTERED = "filtered"  # a subset: every file is the same blob at the same path of the revision
    SUPERSET = "superset"  # the revision's tree and more files


@dataclass(frozen=True, slots=True)
class FileCounts(Wire):
    agreeing: int  # files of the source, each the same blob at the same path of the revision
    total: int  # files of the revision's tree (or directory) it is compared with


@dataclass(frozen=True, slots=True)
class Extra(Wire):
    count: int  # files of the source that the revision does not have
    git: bool  # a .git directory among them (a checkout copied whole)


RecordedBy = str | int | None  # "config", the uid that had the repository recorded, or None: unknown


@dataclass(frozen=True, slots=True)
class Source(Wire):
    """A source store path a build can take (or took) from a revision: its root, or a directory."""

    store_path: str
    nar_hash: str
    subdir: str | None
    rules: tuple[str, ...]
    match: Match = Match.EXACT
    files: FileCounts | None = None
    extra: Extra | None = None
    recorded_by: RecordedBy = "config"


@dataclass(frozen=True, slots=True)
class SourceMatch(Wire):
    """A revision whose tree (or a directory of it) a build used; ``distance``: steps from the
    derivation asked about to the one that used it."""

    store_path: str
    nar_hash: str
    repository: str
    rev: str
    subdir: str | None
    rules: tuple[str, ...]
    refs: tuple[str, ...]
    refs_at_build: tuple[str, ...]
    refs_now: tuple[str, ...]
    match: Match = Match.EXACT
    files: FileCounts | None = None
    extra: Extra | None = None
    recorded_by: RecordedBy = "config"
    distance: int = 0


@dataclass(frozen=True, slots=True)
class LockedInput(Wire):
    """An input pinned in a flake.lock, by its narHash."""

    store_path: str
    nar_hash: str
    repository: str
    type: str
    ref: str | None
    rev: str | None
    lock_file: str
    input: str


@dataclass(frozen=True, slots=True)
class Fallback(Wire):
    rev: str
    commits_behind: int


@dataclass(frozen=True, slots=True)
class Lookup(Wire):
    repository: str
    ref: str
    rev: str
    sources: tuple[Source, ...]
    builds: tuple[MatchedBuild, ...]
    fallback: Fallback | None


@dataclass(frozen=True, slots=True)
class WhyPath(Wire):
    """Why of an output path: its build and the revisions its closure used."""

    path: str
    drv_path: str
    output: str
    built_at: float
    sources: tuple[SourceMatch, ...]
    locked_inputs: tuple[LockedInput, ...]
    builder: str | None = None  # of the build, as in ``Build``
    caches: tuple[str, ...] = ()  # configured caches holding this path, as in ``Build``
    caches_unknown: tuple[str, ...] = ()
    # repositories whose history could not be searched through (not at hand, unreadable, or the
    # query's time bound reached): a revision of theirs may be missing from ``sources``
    not_searched: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WhyHash(Wire):
    """Why of a NAR hash: the revisions with that tree and the builds that used it."""

    nar_hash: str
    sources: tuple[SourceMatch, ...]
    builds: tuple[MatchedBuild, ...]
    not_searched: tuple[str, ...] = ()


Why = WhyPath | WhyHash


def why_from_json(data: object) -> Why:
    if isinstance(data, Mapping) and "path" in data:
        return WhyPath.from_json(data)
    return WhyHash.from_json(data)


@dataclass(frozen=True, slots=True)
class RefChange(Wire):
    ref: str
    rev: str | None  # None: the ref was deleted


@dataclass(frozen=True, slots=True)
class Recorded(Wire):
    repository: str
    refs: dict[str, str]
    moved: tuple[RefChange, ...]
    revisions_indexed: int
    sources_indexed: int


@dataclass(frozen=True, slots=True)
class RefMove(Wire):
    ref: str
    rev: str | None
    seen_at: float


@dataclass(frozen=True, slots=True)
class EventCounts(Wire):
    received: int
    indexed: int
    failed: int
    pending: int


@dataclass(frozen=True, slots=True)
class SinceStart(Wire):
    received: int
    indexed: int
    failed: int
    commit_groups: int


@dataclass(frozen=True, slots=True)
class DatabaseInfo(Wire):
    path: str
    bytes: int
    derivations: int
    outputs: int
    builds: int


@dataclass(frozen=True, slots=True)
class IndexLag(Wire):
    """How far the index is behind the events this service has committed: those still to index
    (a fleet's shared index catches up after an outage), and whether the index is reachable."""

    events: int = 0  # committed locally, not yet in the index
    seconds: float = 0.0  # since the oldest of them was received (0: none)
    reachable: bool = True  # the last attempt to write the index succeeded
    error: str | None = None  # why it did not, while it does not


@dataclass(frozen=True, slots=True)
class UploadStatus(Wire):
    """The upload queue ([upload] to): store paths waiting for a copy (or to be tried alone after
    a failed batch), copied, whose last copy failed (tried again later), gone before a copy."""

    pending: int
    done: int
    failed: int
    dropped: int = 0
    to: str = ""


@dataclass(frozen=True, slots=True)
class Status(Wire):
    version: str
    pid: int
    started_at: float
    uptime: float
    queue_depth: int
    events: EventCounts
    since_start: SinceStart
    spool_files: int
    last_event: Event | None
    database: DatabaseInfo
    contents_pending: int = 0  # store paths whose content is still to learn before they can match
    builder: str = ""  # the name this service records its builds under
    index_lag: IndexLag = IndexLag()
    upload: UploadStatus | None = None  # None: no [upload] configured


@dataclass(frozen=True, slots=True)
class FixedOutput(Wire):
    mode: str  # flat | recursive | text
    hash: str | None  # SRI; None for text


@dataclass(frozen=True, slots=True)
class DerivationInfo(Wire):
    """What the index holds about one derivation (``buildref show``)."""

    drv_path: str
    name: str
    system: str
    fixed: FixedOutput | None
    outputs: dict[str, str | None]
    input_drvs: dict[str, tuple[str, ...]]
    input_srcs: tuple[str, ...]
    builds: tuple[Build, ...]


# -- offline commands


@dataclass(frozen=True, slots=True)
class RevisionHash(Wire):
    """``buildref hash REPO``: a revision as ``builtins.fetchGit`` gives it."""

    rev: str
    nar_hash: str
    store_path: str
    last_modified: int
    rev_count: int
    nar_size: int
    rule: str


@dataclass(frozen=True, slots=True)
class PathHash(Wire):
    """``buildref hash --path``: a local file or directory as ``nix-store --add`` gives it."""

    nar_hash: str
    store_path: str
    nar_size: int


@dataclass(frozen=True, slots=True)
class Mismatch(Wire):
    what: str
    recorded: str
    computed: str


@dataclass(frozen=True, slots=True)
class Verified(Wire):
    drv_path: str
    ok: bool
    mismatches: tuple[Mismatch, ...] = field(default=())



# -- the hook's line (service/buildref/hook.py writes it by hand: it may import nothing of ours)


@dataclass(frozen=True, slots=True)
class HookEvent(Wire):
    v: int
    drv: str
    t: float  # when the hook ran, seconds since the epoch
    outs: tuple[str, ...] = ()  # OUT_PATHS: empty on Nix 2.8

    def __post_init__(self) -> None:
        if self.v != 1:
            raise BadRequest(f"unsupported event version {self.v!r} (this service speaks v1)")

    @staticmethod
    def salvage(data: object, line: bytes) -> tuple[str, float]:
        """What a malformed event can still tell (drv text and time), to keep it with its error."""
        drv = data.get("drv") if isinstance(data, Mapping) else None
        t = data.get("t") if isinstance(data, Mapping) else None
        if not isinstance(drv, str):
            drv = line[:512].decode(errors="replace")
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            t = -1.0
        return drv[:4096], float(t)
