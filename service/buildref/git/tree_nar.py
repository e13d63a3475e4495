"""The NAR of a git tree, read straight from the object database: no checkout, no Nix.

Two rules exist for the same commit (see docs/nix-facts.md): ``RAW`` reads the tree as it is
(flake inputs on Nix >= 2.20), ``EXPORT_IGNORE`` leaves out what ``.gitattributes`` marks
``export-ignore`` (``builtins.fetchGit``, and every git input on Nix <= 2.19, which used
``git archive``). Each subtree's serialisation is memoised by tree id (and, under export-ignore, by
the attribute rules that reach into it), so hashing the next commit reads only what changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from buildref.errors import BadArchive, GitError
from buildref.git.attributes import Rule, export_ignored, parse_attributes
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
    """A file's contents left in the object database, read only while hashing."""

    __slots__ = ("oid", "size")

    def __init__(self, oid: bytes, size: int) -> None:
        self.oid = oid
        self.size = size


class Fragment:
    """The NAR serialisation of one node: bytes, blob references and shared child fragments."""

    __slots__ = ("archived", "parts", "size")

    def __init__(self, parts: list[bytes | BlobRef | Fragment], archived: bool = True) -> None:
        self.parts = parts
        self.size: int = sum(len(p) if isinstance(p, bytes) else p.size for p in parts)
        # Whether `git archive` writes this directory at all (see _Frame.attach).
        self.archived = archived

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
                yield read(part.oid)
            else:
                stack.append(iter(part.parts))


_MemoKey = tuple[bytes, tuple[Rule, ...], bytes]


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

    def _read_blob(self, oid: bytes) -> bytes:
        return self._read(oid, _BLOB)

    def node(self, entry: Entry) -> list[bytes | BlobRef]:
        """The NAR node of a non-directory entry."""
        if entry.is_gitlink:
            return [nar.EMPTY_DIRECTORY]  # submodules are not fetched
        kind = entry.mode & _MODE_TYPE
        if kind == _MODE_LINK:
            return [nar.symlink(self._read_blob(entry.oid))]
        if kind != _MODE_REGULAR:
            raise BadArchive(f"git entry {entry.name!r} has unsupported mode {entry.mode:o}")
        executable = bool(entry.mode & 0o100)
        try:
            kind, size = self._odb.read_header(self._oid(raw=entry.oid))
        except (KeyError, ValueError) as e:
            raise GitError(f"git object {entry.oid.hex()} is missing: {e}") from None
        if kind != _BLOB:
            raise GitError(f"git object {entry.oid.hex()} is not a blob")
        if size <= self.INLINE_MAX and self._inline_bytes < self.max_bytes:
            self._inline_bytes += size
            return [nar.regular(self._read_blob(entry.oid), executable)]
        header = nar.EXECUTABLE_HEADER if executable else nar.REGULAR_HEADER
        return [header + size.to_bytes(8, "little"), BlobRef(entry.oid, size),
                nar.padding(size) + nar.CLOSE]

    def rules_of(self, entries: list[Entry], path: bytes) -> list[Rule]:
        """The export-ignore rules of the ``.gitattributes`` among ``entries``, if any."""
        for entry in entries:
            if entry.name == b".gitattributes" and entry.mode & _MODE_TYPE == _MODE_REGULAR:
                return parse_attributes(self._read(entry.oid, _BLOB), path)
        return []

    def fragment(self, tree: bytes, rule: TreeRule, inherited: tuple[Rule, ...] = (),
                 path: bytes = b"") -> Fragment:
        """The NAR node of ``tree`` found at ``path`` (``""`` or ending in ``/``)."""
        if self._inline_bytes >= self.max_bytes:
            self._memo.clear()
            self._inline_bytes = 0
        # Iterative post-order walk: trees can be deeper than Python's recursion limit.
        root_key = self.key(tree, rule, inherited, path)
        found = self._memo.get(root_key)
        if found is not None:
            return found
        stack = [_Frame.open(self, tree, rule, inherited, path, root_key)]
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

    def key(self, tree: bytes, rule: TreeRule, inherited: tuple[Rule, ...], path: bytes) -> _MemoKey:
        if rule is TreeRule.RAW:
            return (tree, (), b"raw")
        # Rules from above make the result depend on where the tree sits; without them it doesn't.
        return (tree, inherited, path if inherited else b"")

    def memoised(self, key: _MemoKey) -> Fragment | None:
        return self._memo.get(key)

    def nar_digest(self, fragment: Fragment) -> NarDigest:
        h = hashlib.sha256(nar.MAGIC)
        for chunk in fragment.chunks(self._read_blob):
            h.update(chunk)
        return NarDigest(Hash(HashAlgo.SHA256, h.digest()), len(nar.MAGIC) + fragment.size)

    def leaf_fragment(self, entry: Entry) -> Fragment:
        return Fragment(list(self.node(entry)))

    def entries(self, tree: bytes) -> list[Entry]:
        return parse_tree(self._read(tree, _TREE), len(tree))


class _Frame:
    """One directory being serialised: its entries in NAR order and the parts made so far."""

    __slots__ = ("archived", "entries", "index", "inherited", "key", "parts", "path", "pending", "rule")

    def __init__(self, entries: list[Entry], rule: TreeRule, inherited: tuple[Rule, ...],
                 path: bytes, key: _MemoKey, archived: bool) -> None:
        self.archived = archived
        self.entries = entries
        self.rule = rule
        self.inherited = inherited
        self.path = path
        self.key = key
        self.index = 0
        self.parts: list[bytes | BlobRef | Fragment] = [nar.DIRECTORY_HEADER]
        self.pending = b""  # the entry prefix of the subtree being serialised

    @classmethod
    def open(cls, cache: TreeNarCache, tree: bytes, rule: TreeRule, inherited: tuple[Rule, ...],
             path: bytes, key: _MemoKey) -> _Frame:
        cache.trees_read += 1
        entries = cache.entries(tree)
        # git archive writes a directory (queued until then) just before it considers the first
        # non-directory entry below it, whether or not that entry is then export-ignored.
        archived = any(not e.is_tree for e in entries)
        if rule is TreeRule.EXPORT_IGNORE:
            inherited = inherited + tuple(cache.rules_of(entries, path))
            if inherited:
                entries = [
                    e for e in entries
                    if not export_ignored(inherited, path + e.name, e.is_tree or e.is_gitlink)
                ]
        entries.sort(key=lambda e: e.name)  # NAR order: raw bytes, not git's tree order
        for e in entries:
            nar.check_entry_name(e.name, path.decode(errors="replace") or "tree root")
        return cls(entries, rule, inherited, path, key, archived)

    def next_subtree(self, cache: TreeNarCache) -> _Frame | None:
        """Add leaf entries until reaching a subtree that is not memoised; open a frame for it."""
        while self.index < len(self.entries):
            entry = self.entries[self.index]
            self.index += 1
            prefix = nar.entry_prefix(entry.name)
            if not entry.is_tree:
                node = cache.node(entry)
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
            memo = cache.memoised(key)
            if memo is not None:
                self.attach(memo)
                continue
            return _Frame.open(cache, entry.oid, self.rule, self.inherited, child_path, key)
        return None

    def attach(self, child: Fragment) -> None:
        # A directory with no file, symlink or gitlink below it outside export-ignored directories
        # (or an empty tree object) is never written by git archive, so Nix does not have it.
        if self.rule is TreeRule.EXPORT_IGNORE and not child.archived:
            return
        self.archived = True
        self.parts.append(self.pending)
        self.parts.append(child)
        self.parts.append(nar.CLOSE)

    def finish(self) -> Fragment:
        self.parts.append(nar.CLOSE)
        return Fragment(self.parts, self.archived)
