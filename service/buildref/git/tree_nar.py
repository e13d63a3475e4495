"""The NAR of a git tree, read straight from the object database: no checkout, no Nix.

Two rules exist for the same commit (see docs/nix-facts.md): ``RAW`` reads the tree as it is
(flake inputs on Nix >= 2.20), ``EXPORT_IGNORE`` is what ``git archive`` writes (``builtins.fetchGit``,
and every git input on Nix <= 2.19): it leaves out what ``.gitattributes`` marks ``export-ignore`` and
rewrites files as their attributes say (``eol``/``text``, ``ident``, ``export-subst``).

Each subtree's serialisation is memoised by tree id (and, under export-ignore, by the attribute
rules that reach into it), so hashing the next commit reads only what changed. A subtree holding an
expanded ``$Format:...$`` depends on the commit too: its memo entry serves only that commit.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from buildref.errors import BadArchive, GitError
from buildref.git import archive
from buildref.git.archive import ArchiveFails, ArchiveUnknown, CommitData, Rewrite
from buildref.git.attributes import EMPTY, MAX_FILE_SIZE, AttributesFile, AttributeStack, parse_attributes
from buildref.nix import nar
from buildref.nix.hashes import Hash, HashAlgo
from buildref.nix.nar import NarDigest


class TreeRule(Enum):
    """Which files of a commit Nix puts in the store."""

    EXPORT_IGNORE = "export-ignore"
    RAW = "raw"

_TREE = 2
_BLOB = 3
_MODE_TREE = 0o040000
_MODE_LINK = 0o120000
_MODE_GITLINK = 0o160000
_MODE_TYPE = 0o170000
_MODE_REGULAR = 0o100000


@dataclass(frozen=True, slots=True)
class Entry:
    name: bytes
    mode: int
    oid: bytes

    @property
    def is_tree(self) -> bool:
        return self.mode & _MODE_TYPE == _MODE_TREE

    @property
    def is_gitlink(self) -> bool:
        return self.mode & _MODE_TYPE == _MODE_GITLINK

    @property
    def is_regular(self) -> bool:
        return self.mode & _MODE_TYPE == _MODE_REGULAR


def parse_tree(data: bytes, oid_size: int = 20) -> list[Entry]:
    """Entries of a raw git tree object: ``<octal mode> <name>\\0<binary oid>`` repeated."""
    entries = []
    pos, end = 0, len(data)
    while pos < end:
        space = data.find(b" ", pos)
        nul = data.find(b"\0", space + 1)
        if space == -1 or nul == -1 or nul + 1 + oid_size > end:
            raise GitError("corrupt git tree object")
        entries.append(Entry(data[space + 1:nul], int(data[pos:space], 8), data[nul + 1:nul + 1 + oid_size]))
        pos = nul + 1 + oid_size
    return entries


class BlobRef:
    """A file's contents left in the object database, read (and rewritten) only while hashing."""

    __slots__ = ("oid", "size", "transform")

    def __init__(self, oid: bytes, size: int, transform: Callable[[bytes], bytes] | None = None) -> None:
        self.oid = oid
        self.size = size
        self.transform = transform


class Fragment:
    """The NAR serialisation of one node: bytes, blob references and shared child fragments."""

    __slots__ = ("archived", "commit", "parts", "path", "problem", "size")

    def __init__(self, parts: list[bytes | BlobRef | Fragment], archived: bool = True,
                 commit: str | None = None, path: bytes = b"", problem: ArchiveUnknown | None = None) -> None:
        self.parts = parts
        self.size: int = sum(len(p) if isinstance(p, bytes) else p.size for p in parts)
        # Whether `git archive` writes this directory at all (see _Frame.attach).
        self.archived = archived
        # The commit whose $Format:...$ expansions it holds, if any (then it serves only that
        # commit), and where it sits (for problem messages).
        self.commit = commit
        self.path = path
        # Why its bytes are unknown (a file git archive writes from more than the commit), if so.
        self.problem = problem

    def chunks(self, read: Callable[[bytes], bytes]) -> Iterator[bytes]:
        """The NAR bytes in order; ``read`` fetches referenced blobs, one at a time."""
        stack: list[Iterator[bytes | BlobRef | Fragment]] = [iter(self.parts)]
        while stack:
            part = next(stack[-1], None)
            if part is None:
                stack.pop()
            elif isinstance(part, bytes):
                yield part
            elif isinstance(part, BlobRef):
                data = read(part.oid)
                yield data if part.transform is None else part.transform(data)
            else:
                stack.append(iter(part.parts))


_MemoKey = tuple[bytes, AttributeStack, bytes]
# A leaf's NAR parts, the commit they depend on (an expanded $Format:...$), why they are unknown.
_Node = tuple[list[bytes | BlobRef], str | None, ArchiveUnknown | None]
_RAW = b"raw"


class TreeNarCache:
    """Serialises git trees of one repository to NAR, memoising subtrees.

    Small files are kept in the memo as bytes, up to ``max_bytes`` in all; larger files, and any
    past that budget, are kept as references and streamed from the object database while hashing,
    so no archive is ever whole in memory. When the budget is spent, the next tree starts a new memo.
    """

    INLINE_MAX = 256 << 10  # files larger than this are always read at hashing time

    def __init__(self, repo: Any, max_bytes: int = 256 << 20) -> None:
        import pygit2

        self._oid = pygit2.Oid
        self._odb = repo.odb
        self.max_bytes = max_bytes
        self._memo: dict[_MemoKey, Fragment] = {}
        # parsed trees, most recently used last, bounded by entries: the same big directory is
        # listed once per path below it (a folder of 5,000 directories, 5,000 times)
        self._listings: OrderedDict[bytes, _Listing] = OrderedDict()
        self._listed = 0
        self.listings_parsed = 0  # tree objects parsed into entries (each big one should be once)
        self._inline_bytes = 0
        self.trees_read = 0  # how many tree objects were serialised (not taken from the memo)

    def _read(self, oid: bytes, want: int) -> bytes:
        try:
            kind, data = self._odb.read(self._oid(raw=oid))
        except (KeyError, ValueError) as e:
            raise GitError(f"git object {oid.hex()} is missing: {e}") from None
        if kind != want:
            raise GitError(f"git object {oid.hex()} is not a {'tree' if want == _TREE else 'blob'}")
        return bytes(data)

    def read_blob(self, oid: bytes) -> bytes:
        return self._read(oid, _BLOB)

    def blob_size(self, oid: bytes) -> int:
        try:
            kind, size = self._odb.read_header(self._oid(raw=oid))
        except (KeyError, ValueError) as e:
            raise GitError(f"git object {oid.hex()} is missing: {e}") from None
        if kind != _BLOB:
            raise GitError(f"git object {oid.hex()} is not a blob")
        return int(size)

    def _inline(self, size: int) -> bool:
        if size <= self.INLINE_MAX and self._inline_bytes < self.max_bytes:
            self._inline_bytes += size
            return True
        return False

    def node(self, entry: Entry, path: bytes = b"", rewrite: Rewrite | None = None,
             commit: CommitData | None = None) -> _Node:
        """The NAR node of a non-directory entry at ``path``, as ``git archive`` writes it when a
        ``rewrite`` applies; the commit it depends on, and why it is unknown, if so."""
        if entry.is_gitlink:
            return [nar.EMPTY_DIRECTORY], None, None  # submodules are not fetched
        kind = entry.mode & _MODE_TYPE
        if kind == _MODE_LINK:
            return [nar.symlink(self.read_blob(entry.oid))], None, None
        if kind != _MODE_REGULAR:
            raise BadArchive(f"git entry {entry.name!r} has unsupported mode {entry.mode:o}")
        executable = bool(entry.mode & 0o100)
        size = self.blob_size(entry.oid)
        if rewrite is not None and (rewrite.subst or size <= archive.BIG_FILE_THRESHOLD):
            return self._rewritten(entry, path, rewrite, commit, executable)
        if self._inline(size):
            return [nar.regular(self.read_blob(entry.oid), executable)], None, None
        header = nar.EXECUTABLE_HEADER if executable else nar.REGULAR_HEADER
        return [header + size.to_bytes(8, "little"), BlobRef(entry.oid, size),
                nar.padding(size) + nar.CLOSE], None, None

    def _rewritten(self, entry: Entry, path: bytes, rewrite: Rewrite, commit: CommitData | None,
                   executable: bool) -> _Node:
        blob_hex = entry.oid.hex()
        try:
            data, dependent = archive.apply(rewrite, self.read_blob(entry.oid), blob_hex, commit, path)
        except ArchiveUnknown as e:
            # Left as an empty file: a fragment with a problem is never hashed.
            return [nar.regular(b"", executable)], commit.oid if commit is not None else None, e
        depends_on = commit.oid if dependent and commit is not None else None
        size = len(data)
        if self._inline(size):
            return [nar.regular(data, executable)], depends_on, None

        def transform(blob: bytes) -> bytes:
            return archive.apply(rewrite, blob, blob_hex, commit, path)[0]

        header = nar.EXECUTABLE_HEADER if executable else nar.REGULAR_HEADER
        return [header + size.to_bytes(8, "little"), BlobRef(entry.oid, size, transform),
                nar.padding(size) + nar.CLOSE], depends_on, None

    def attributes_of(self, entries: list[Entry], path: bytes) -> AttributesFile | None:
        """The ``.gitattributes`` among ``entries``, if any. git reads it from the index whatever
        its mode, so a symlink's target text counts too."""
        for entry in entries:
            if entry.name[:1] > b".":  # git's order: nothing after this can be .gitattributes
                break
            if entry.name == b".gitattributes" and entry.mode & _MODE_TYPE in (_MODE_REGULAR, _MODE_LINK):
                if self.blob_size(entry.oid) >= MAX_FILE_SIZE:
                    return None
                return parse_attributes(self._read(entry.oid, _BLOB), path, macro_ok=not path)
        return None

    def stack_of(self, entries: list[Entry], path: bytes, inherited: AttributeStack) -> AttributeStack:
        """The attribute rules in effect in the directory at ``path`` holding ``entries``."""
        found = self.attributes_of(entries, path)
        if not path:
            # Macros come from the root file alone.
            return EMPTY if found is None else AttributeStack.root(found)
        return inherited if found is None else inherited.push(found)

    def fragment(self, tree: bytes, rule: TreeRule, inherited: AttributeStack = EMPTY,
                 path: bytes = b"", commit: CommitData | None = None) -> Fragment:
        """The NAR node of ``tree`` found at ``path`` (``""`` or ending in ``/``) in ``commit``
        (needed under export-ignore for ``export-subst``)."""
        if self._inline_bytes >= self.max_bytes:
            self._memo.clear()
            self._inline_bytes = 0
        # Iterative post-order walk: trees can be deeper than Python's recursion limit.
        root_key = self.key(tree, rule, inherited, path)
        found = self.memoised(root_key, commit, path)
        if found is not None:
            return found
        stack = [_Frame.open(self, tree, rule, inherited, path, root_key, commit)]
        result: Fragment | None = None
        while stack:
            frame = stack[-1]
            child = frame.next_subtree(self)
            if child is not None:
                stack.append(child)
                continue
            result = self._memo[frame.key] = frame.finish()
            stack.pop()
            if stack:
                stack[-1].attach(result)
        assert result is not None
        return result

    def key(self, tree: bytes, rule: TreeRule, inherited: AttributeStack, path: bytes) -> _MemoKey:
        if rule is TreeRule.RAW:
            return (tree, EMPTY, _RAW)
        # Rules from above with a "/" in their pattern make the result depend on where the tree
        # sits; basename rules and no rules don't.
        return (tree, inherited, path if inherited.anchored else b"")

    def memoised(self, key: _MemoKey, commit: CommitData | None, path: bytes) -> Fragment | None:
        found = self._memo.get(key)
        if found is None or found.commit is None:
            return found
        # Expanded for a commit: it serves that commit, at that path, only.
        if commit is not None and found.commit == commit.oid and found.path == path:
            return found
        return None

    def dump(self, fragment: Fragment) -> Iterator[bytes]:
        """The NAR of ``fragment``, in chunks; raises ``ArchiveUnknown`` when its bytes are unknown."""
        if fragment.problem is not None:
            raise fragment.problem
        yield nar.MAGIC
        yield from fragment.chunks(self.read_blob)

    def nar_digest(self, fragment: Fragment) -> NarDigest:
        h = hashlib.sha256()
        for chunk in self.dump(fragment):
            h.update(chunk)
        return NarDigest(Hash(HashAlgo.SHA256, h.digest()), len(nar.MAGIC) + fragment.size)

    def leaf_fragment(self, entry: Entry, path: bytes = b"", rewrite: Rewrite | None = None,
                      commit: CommitData | None = None) -> Fragment:
        parts, depends_on, problem = self.node(entry, path, rewrite, commit)
        return Fragment(list(parts), commit=depends_on, path=path, problem=problem)

    def _listing(self, tree: bytes) -> _Listing:
        found = self._listings.get(tree)
        if found is not None:
            self._listings.move_to_end(tree)
            return found
        found = self._listings[tree] = _Listing(parse_tree(self._read(tree, _TREE), len(tree)))
        self.listings_parsed += 1
        self._listed += len(found.entries)
        while self._listed > MAX_LISTED and len(self._listings) > 1:
            self._listed -= len(self._listings.popitem(last=False)[1].entries)
        return found

    def entries(self, tree: bytes) -> list[Entry]:
        return self._listing(tree).entries

    def entry(self, tree: bytes, name: bytes) -> Entry | None:
        """The entry called ``name`` in ``tree``, if any."""
        return self._listing(tree).named(name)


MAX_LISTED = 200_000  # tree entries kept parsed


class _Listing:
    """A parsed tree, and its entries by name once one is looked up by name."""

    __slots__ = ("_by_name", "entries")

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self._by_name: dict[bytes, Entry] | None = None

    def named(self, name: bytes) -> Entry | None:
        if self._by_name is None:
            self._by_name = {e.name: e for e in self.entries}
        return self._by_name.get(name)


class _Frame:
    """One directory being serialised: its entries in NAR order and the parts made so far."""

    __slots__ = ("archived", "commit", "depends_on", "entries", "index", "inherited", "key", "parts",
                 "path", "pending", "problem", "rewrites", "rule")

    def __init__(self, entries: list[Entry], rule: TreeRule, inherited: AttributeStack, path: bytes,
                 key: _MemoKey, archived: bool, rewrites: dict[bytes, Rewrite],
                 commit: CommitData | None) -> None:
        self.archived = archived
        self.entries = entries
        self.rule = rule
        self.inherited = inherited
        self.path = path
        self.key = key
        self.rewrites = rewrites
        self.commit = commit
        self.depends_on: str | None = None
        self.problem: ArchiveUnknown | None = None
        self.index = 0
        self.parts: list[bytes | BlobRef | Fragment] = [nar.DIRECTORY_HEADER]
        self.pending = b""  # the entry prefix of the subtree being serialised

    @classmethod
    def open(cls, cache: TreeNarCache, tree: bytes, rule: TreeRule, inherited: AttributeStack,
             path: bytes, key: _MemoKey, commit: CommitData | None) -> _Frame:
        cache.trees_read += 1
        entries = cache.entries(tree)
        # git archive writes a directory (queued until then) just before it considers the first
        # non-directory entry below it, whether or not that entry is then export-ignored.
        archived = any(not e.is_tree for e in entries)
        rewrites: dict[bytes, Rewrite] = {}
        if rule is TreeRule.EXPORT_IGNORE:
            inherited = cache.stack_of(entries, path, inherited)
            if inherited.active:
                entries = archived_entries(inherited, entries, path, rewrites)
        entries.sort(key=lambda e: e.name)  # NAR order: raw bytes, not git's tree order
        for e in entries:
            nar.check_entry_name(e.name, path.decode(errors="replace") or "tree root")
        return cls(entries, rule, inherited, path, key, archived, rewrites, commit)

    def next_subtree(self, cache: TreeNarCache) -> _Frame | None:
        """Add leaf entries until reaching a subtree that is not memoised; open a frame for it."""
        while self.index < len(self.entries):
            entry = self.entries[self.index]
            self.index += 1
            prefix = nar.entry_prefix(entry.name)
            if not entry.is_tree:
                rewrite = self.rewrites.get(entry.name) if self.rewrites else None
                if rewrite is None:
                    node, depends_on, problem = cache.node(entry)
                else:
                    path = self.path + entry.name
                    node, depends_on, problem = cache.node(entry, path, rewrite, self.commit)
                    self._depend(depends_on, problem)
                if len(node) == 1:
                    assert isinstance(node[0], bytes)
                    self.parts.append(prefix + node[0] + nar.CLOSE)
                else:
                    self.parts.append(prefix)
                    self.parts.extend(node)
                    self.parts.append(nar.CLOSE)
                continue
            child_path = self.path + entry.name + b"/"
            key = cache.key(entry.oid, self.rule, self.inherited, child_path)
            self.pending = prefix
            memo = cache.memoised(key, self.commit, child_path)
            if memo is not None:
                self.attach(memo)
                continue
            return _Frame.open(cache, entry.oid, self.rule, self.inherited, child_path, key, self.commit)
        return None

    def _depend(self, depends_on: str | None, problem: ArchiveUnknown | None) -> None:
        self.depends_on = self.depends_on or depends_on
        # The first problem, unless a later one makes git archive fail for the whole revision.
        if self.problem is None or (isinstance(problem, ArchiveFails)
                                    and not isinstance(self.problem, ArchiveFails)):
            self.problem = problem or self.problem

    def attach(self, child: Fragment) -> None:
        # A directory with no file, symlink or gitlink below it outside export-ignored directories
        # (or an empty tree object) is never written by git archive, so Nix does not have it.
        if self.rule is TreeRule.EXPORT_IGNORE and not child.archived:
            return
        self.archived = True
        self._depend(child.commit, child.problem)
        self.parts.append(self.pending)
        self.parts.append(child)
        self.parts.append(nar.CLOSE)

    def finish(self) -> Fragment:
        self.parts.append(nar.CLOSE)
        return Fragment(self.parts, self.archived, self.depends_on, self.path, self.problem)


def archived_entries(stack: AttributeStack, entries: list[Entry], path: bytes,
                      rewrites: dict[bytes, Rewrite]) -> list[Entry]:
    """The entries ``git archive`` writes, noting in ``rewrites`` the regular files it changes."""
    kept = []
    for e in entries:
        if e.is_tree or e.is_gitlink:
            if not stack.export_ignored(path + e.name, True):
                kept.append(e)
            continue
        attrs = stack.file_attributes(path + e.name)
        if attrs.export_ignore:
            continue
        kept.append(e)
        if e.is_regular:
            rewrite = archive.rewrite_of(attrs)
            if rewrite is not None:
                rewrites[e.name] = rewrite
    return kept
