"""Git ids of what Nix copies, so a store path and a revision compare by content.

The *form* of a directory is the git tree object it would be if git stored exactly what is in the
store: regular files as blobs (mode 100644, or 100755 when executable), symlinks as blobs of their
target (120000), directories as trees (040000) — an empty one as the empty tree. It is computed two
ways that agree when the contents agree:

- from git objects (:class:`TreeForms`): a commit's tree, or a directory in it, under a rule —
  ``raw`` as committed (submodules become empty directories, as Nix copies them), or
  ``export-ignore`` as ``git archive`` leaves it (the same decisions as ``tree_nar``). Only tree
  objects are read, never file contents, so the forms of every directory of a commit are cheap;
- from a store copy (:func:`path_form`): the file system, every file read once.

Equal forms mean equal trees whatever the store path's name: a flake's ``src = ./.;`` copied again
as ``<h2>-<h1>-source``, ``builtins.path { name = ...; }``, a subdirectory. Each form also says how
many files it holds and whether any of them could tell one project from another (trivial content —
an empty directory, empty files, a lone licence — never names a revision).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from buildref.errors import BadArchive, BuildrefError, Transient, transient
from buildref.git import archive
from buildref.git.archive import ArchiveUnknown, CommitData, Rewrite
from buildref.git.attributes import EMPTY, AttributeStack
from buildref.git.tree_nar import Entry, TreeNarCache, TreeRule, archived_entries

EMPTY_TREE = bytes.fromhex("4b825dc642cb6eb9a060e54bf8d69288fbee4904")
EMPTY_BLOB = bytes.fromhex("e69de29bb2d1d6434b8b29ae775ad8c2e48c5391")
_DIR, _FILE, _EXEC, _LINK = b"40000", b"100644", b"100755", b"120000"
_MODE_TYPE, _MODE_TREE, _MODE_LINK, _MODE_GITLINK = 0o170000, 0o040000, 0o120000, 0o160000

# Files unrelated projects commonly share byte for byte: a tree holding nothing else says nothing
# about where it came from.
_COMMON = re.compile(rb"(?i)(licen[cs]e|copying|copyright|notice|unlicen[cs]e|authors|contributors|"
                     rb"code_of_conduct|contributing|security|funding)([._-].*)?|\.git(ignore|keep|attributes)|"
                     rb"\.keep|\.editorconfig|\.npmignore|\.dockerignore")


@dataclass(frozen=True, slots=True)
class Form:
    oid: bytes  # git id of the tree (or, for a single file, of its blob)
    files: int  # regular files and symlinks, at any depth
    distinctive: bool  # holds a non-empty file other than the commonly shared ones
    archived: bool = True  # written by git archive (export-ignore rule; see TreeNarCache)
    known: bool = True  # False: git archive's bytes for it cannot be known from the commit
    depends_on: str | None = None  # the commit it was formed for (an expanded export-subst)

    @property
    def identifying(self) -> bool:
        """Whether finding this content names the revision it came from."""
        return self.distinctive and self.known

    @property
    def hex(self) -> str:
        return self.oid.hex()


@dataclass(frozen=True, slots=True)
class DirForm:
    """A directory of a commit (``subdir`` "" for the root) as Nix copies it under ``rule``."""

    subdir: str
    rule: TreeRule
    form: Form
    tree: bytes  # the git tree it is formed from


def blob_id(data: bytes) -> bytes:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).digest()


def tree_id(items: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """The id of a tree object of (mode, name, oid) entries, in git's order (a directory sorts as
    if its name ended in ``/``)."""
    items.sort(key=lambda item: item[1] + b"/" if item[0] == _DIR else item[1])
    body = b"".join(mode + b" " + name + b"\0" + oid for mode, name, oid in items)
    return hashlib.sha1(b"tree %d\0" % len(body) + body, usedforsecurity=False).digest()


def distinctive_leaf(name: bytes, oid: bytes) -> bool:
    return oid != EMPTY_BLOB and _COMMON.fullmatch(name) is None


_Key = tuple[bytes, AttributeStack, bytes]


def _always(_: Form) -> bool:
    return True


class TreeForms:
    """Forms of one repository's trees, memoised as the NAR fragments are (by tree id, and under
    export-ignore by the attributes that reach into it; a form with an expanded ``export-subst``
    serves only its own commit), sharing the tree reader of ``trees``. Under export-ignore a file
    git archive rewrites (eol, ident, export-subst) has the blob id of what it writes."""

    MAX_MEMO = 1_000_000

    def __init__(self, trees: TreeNarCache) -> None:
        self._trees = trees
        self._memo: dict[_Key, tuple[Form, bytes]] = {}
        self.trees_read = 0

    def form(self, tree: bytes, rule: TreeRule, inherited: AttributeStack = EMPTY, path: bytes = b"",
             commit: CommitData | None = None) -> Form:
        """The form of ``tree`` found at ``path`` (``""`` or ending in ``/``) of ``commit``."""
        *_, root = self._walk(tree, rule, inherited, path, commit, None)  # the walk ends with the root
        return root

    def directories(self, tree: bytes, rule: TreeRule, commit: CommitData | None = None,
                    beyond: Collection[bytes] = ()) -> list[DirForm]:
        """The root and every directory Nix has under ``rule`` whose form can be known — except,
        with ``beyond``, those below a directory whose form is memoised and in ``beyond`` or
        could name no revision: the caller has them already, when ``beyond`` holds whole
        revisions' identifying forms (a form fixes every form below it). The next commit's
        identifying forms beyond its parent's cost its changed directories, not all of them."""
        listed: list[DirForm] = []

        def enter(form: Form) -> bool:
            return form.distinctive and form.oid not in beyond

        for _ in self._walk(tree, rule, EMPTY, b"", commit, listed, enter if beyond else _always):
            pass
        return listed

    def _descend(self, tree: bytes, subdir: str, rule: TreeRule
                 ) -> tuple[bytes, AttributeStack, bytes] | None:
        """The tree of ``subdir``, the attributes in effect above it and its path; None when Nix
        does not have it (missing, not a directory, left out by export-ignore)."""
        stack, path = EMPTY, b""
        for part in [p for p in subdir.split("/") if p]:
            if rule is TreeRule.EXPORT_IGNORE:
                stack = self._trees.stack_of(self.entries(tree), path, stack)
            name = os.fsencode(part)
            entry = self._trees.entry(tree, name)
            if entry is None or not entry.is_tree:
                return None
            if rule is TreeRule.EXPORT_IGNORE and stack.export_ignored(path + name, True):
                return None
            tree, path = entry.oid, path + name + b"/"
        return tree, stack, path

    def at(self, tree: bytes, subdir: str, rule: TreeRule, commit: CommitData | None = None) -> Form | None:
        """The form of the directory ``subdir`` ("" for the root) of ``tree`` as Nix copies it out of
        the fetched tree, or None when Nix does not have it or its bytes cannot be known."""
        found = self._descend(tree, subdir, rule)
        if found is None:
            return None
        form = self.form(*found[:1], rule, found[1], found[2], commit)
        return form if (rule is TreeRule.RAW or form.archived) and form.known else None

    def files(self, tree: bytes, subdir: str, rule: TreeRule, commit: CommitData | None = None
              ) -> dict[str, tuple[bytes, bytes]] | None:
        """Every file of the directory ``subdir`` of ``tree`` as Nix copies it under ``rule``: path
        (relative to it) -> (mode, blob id); None when Nix does not have that directory or what
        git archive writes there cannot be known."""
        found = self._descend(tree, subdir, rule)
        if found is None:
            return None
        files: dict[str, tuple[bytes, bytes]] = {}
        start = len(found[2])
        pending = [found]
        while pending:
            tree, stack, path = pending.pop()
            entries, rewrites, stack = self._entries(tree, rule, stack, path)
            for e in entries:
                kind = e.mode & _MODE_TYPE
                if kind == _MODE_TREE:
                    pending.append((e.oid, stack, path + e.name + b"/"))
                elif kind != _MODE_GITLINK:  # a submodule is an empty directory: no files
                    leaf = self._leaf(e, path, rewrites.get(e.name), commit)
                    if leaf is None:
                        return None
                    files[(path + e.name)[start:].decode(errors="surrogateescape")] = leaf[:2]
        return files

    def _entries(self, tree: bytes, rule: TreeRule, stack: AttributeStack, path: bytes,
                 entries: list[Entry] | None = None
                 ) -> tuple[list[Entry], dict[bytes, Rewrite], AttributeStack]:
        """The entries Nix has of ``tree`` (at ``path``; ``entries``: all of its own, when read
        already), the files git archive rewrites, and the attributes in effect there."""
        if entries is None:
            entries = self.entries(tree)
        rewrites: dict[bytes, Rewrite] = {}
        if rule is TreeRule.EXPORT_IGNORE:
            stack = self._trees.stack_of(entries, path, stack)
            if stack.active:
                entries = archived_entries(stack, entries, path, rewrites)
        return entries, rewrites, stack

    def _leaf(self, entry: Entry, path: bytes, rewrite: Rewrite | None, commit: CommitData | None
              ) -> tuple[bytes, bytes, bool] | None:
        """(mode, blob id, whether it depends on the commit) of a non-directory entry as git archive
        writes it; None when that cannot be known."""
        kind = entry.mode & _MODE_TYPE
        if kind == _MODE_LINK:
            return _LINK, entry.oid, False
        mode = _EXEC if entry.mode & 0o100 else _FILE
        big = rewrite is not None and not rewrite.subst and (
            self._trees.blob_size(entry.oid) > archive.BIG_FILE_THRESHOLD)
        if rewrite is None or big:
            return mode, entry.oid, False
        try:
            blob = self._trees.read_blob(entry.oid)
            data, dependent = archive.apply(rewrite, blob, entry.oid.hex(), commit,
                                            path + entry.name)
        except ArchiveUnknown:
            return None
        return mode, blob_id(data), dependent

    def _key(self, tree: bytes, rule: TreeRule, inherited: AttributeStack, path: bytes) -> _Key:
        return self._trees.key(tree, rule, inherited, path)

    def memoised(self, key: _Key, commit: CommitData | None, path: bytes) -> Form | None:
        found = self._memo.get(key)
        if found is None:
            return None
        form, where = found
        same_commit = commit is not None and form.depends_on == commit.oid and where == path
        if form.depends_on is None or same_commit:
            return form
        return None

    def _walk(self, tree: bytes, rule: TreeRule, inherited: AttributeStack, path: bytes,
              commit: CommitData | None, listing: list[DirForm] | None,
              enter: Callable[[Form], bool] | None = None) -> Iterator[Form]:
        """Post-order over the directories below ``tree``, each one's form yielded when done (the
        root last). A memoised directory is entered only when ``enter`` says so (a listing needs
        every directory's path); every directory entered is listed in ``listing``."""
        if len(self._memo) > self.MAX_MEMO:
            self._memo.clear()
        stack = [_Frame.open(self, tree, rule, inherited, path, commit, enter)]
        while stack:
            frame = stack[-1]
            child = frame.next_subtree(self, enter)
            if child is not None:
                stack.append(child)
                continue
            stack.pop()
            result = frame.form
            if result is None:
                result = frame.finish()
                self._memo[frame.key] = (result, frame.path)
            if listing is not None and result.known and (rule is TreeRule.RAW or result.archived):
                subdir = frame.path.decode(errors="surrogateescape").rstrip("/")
                listing.append(DirForm(subdir, rule, result, frame.key[0]))
            if stack:
                stack[-1].attach(frame.name, result)
            yield result

    def entries(self, tree: bytes) -> list[Entry]:
        self.trees_read += 1
        return self._trees.entries(tree)


class _Frame:
    __slots__ = ("archived", "commit", "depends_on", "distinctive", "entries", "files", "form", "index",
                 "inherited", "items", "key", "known", "name", "path", "rewrites", "rule")

    def __init__(self, key: _Key, rule: TreeRule, inherited: AttributeStack, path: bytes, name: bytes,
                 commit: CommitData | None) -> None:
        self.key = key
        self.rule = rule
        self.inherited = inherited
        self.path = path
        self.name = name
        self.commit = commit
        self.entries: list[Entry] = []
        self.rewrites: dict[bytes, Rewrite] = {}
        self.index = 0
        self.items: list[tuple[bytes, bytes, bytes]] = []
        self.files = 0
        self.distinctive = False
        self.archived = False
        self.known = True
        self.depends_on: str | None = None
        self.form: Form | None = None  # set when the whole directory came from the memo

    @classmethod
    def open(cls, forms: TreeForms, tree: bytes, rule: TreeRule, inherited: AttributeStack, path: bytes,
             commit: CommitData | None, enter: Callable[[Form], bool] | None, name: bytes = b"") -> _Frame:
        """The frame of ``tree``; its entries are read only when it will be entered (its form is
        not memoised, or ``enter`` wants it entered)."""
        key = forms._key(tree, rule, inherited, path)
        frame = cls(key, rule, inherited, path, name, commit)
        frame.form = forms.memoised(key, commit, path)
        if frame.form is not None and (enter is None or not enter(frame.form)):
            return frame
        entries = forms.entries(tree)
        # as in tree_nar: git archive writes a directory when it reaches a non-directory entry below it
        frame.archived = any(e.mode & _MODE_TYPE != _MODE_TREE for e in entries)
        frame.entries, frame.rewrites, frame.inherited = forms._entries(tree, rule, inherited, path, entries)
        return frame

    def next_subtree(self, forms: TreeForms, enter: Callable[[Form], bool] | None) -> _Frame | None:
        """Add leaf entries until reaching a subtree to open (one not memoised, or one ``enter``
        wants entered)."""
        if self.form is not None and (enter is None or not enter(self.form)):
            return None
        while self.index < len(self.entries):
            entry = self.entries[self.index]
            self.index += 1
            kind = entry.mode & _MODE_TYPE
            if kind == _MODE_TREE:
                child_path = self.path + entry.name + b"/"
                child = _Frame.open(forms, entry.oid, self.rule, self.inherited, child_path,
                                    self.commit, enter, entry.name)
                if child.form is None or (enter is not None and enter(child.form)):
                    return child
                self.attach(entry.name, child.form)
            elif self.form is not None:
                continue  # memoised: only its directories are wanted
            elif kind == _MODE_GITLINK:  # a submodule: Nix copies an empty directory
                self.items.append((_DIR, entry.name, EMPTY_TREE))
            else:
                leaf = forms._leaf(entry, self.path, self.rewrites.get(entry.name), self.commit)
                if leaf is None:
                    self.known = False
                    continue
                mode, oid, dependent = leaf
                if dependent and self.commit is not None:
                    self.depends_on = self.commit.oid
                self.items.append((mode, entry.name, oid))
                self.files += 1
                self.distinctive = self.distinctive or distinctive_leaf(entry.name, oid)
        return None

    def attach(self, name: bytes, child: Form) -> None:
        if self.form is not None:
            return  # memoised: its own form is known already
        if self.rule is TreeRule.EXPORT_IGNORE and not child.archived:
            return  # git archive never writes it, so Nix does not have it
        self.archived = True
        self.items.append((_DIR, name, child.oid))
        self.files += child.files
        self.distinctive = self.distinctive or child.distinctive
        self.known = self.known and child.known
        self.depends_on = self.depends_on or child.depends_on

    def finish(self) -> Form:
        return Form(tree_id(self.items), self.files, self.distinctive, self.archived, self.known,
                    self.depends_on)


class TooLarge(BadArchive):
    """A store path with more files or bytes than a form is computed for."""


SAMPLES = 8  # files a store copy is sampled by (those with the smallest blob ids: a stable choice)
MAX_DIRS = 1000  # subdirectories' forms kept per store copy, the shallowest first ...
MAX_DEPTH = 4  # ... down to this depth


@dataclass(frozen=True, slots=True)
class CopyFacts:
    """What a store copy holds, read in one walk."""

    form: Form
    dirs: tuple[tuple[str, Form], ...]  # identifying subdirectories (a vendored tree, a submodule)
    samples: tuple[tuple[str, bytes], ...]  # (path, blob id) of distinctive files, never under .git/
    manifest: dict[str, tuple[bytes, bytes]] | None  # path -> (mode, blob id), when asked for


def path_form(path: str | bytes, max_files: int = 200_000, max_bytes: int = 1 << 30) -> Form:
    """The form of the file, symlink or directory at ``path`` (not followed), read from disk."""
    return read_copy(path, max_files, max_bytes).form


def read_copy(path: str | bytes, max_files: int = 200_000, max_bytes: int = 1 << 30,
              manifest: bool = False) -> CopyFacts:
    """Read the store copy at ``path``: its form, its identifying subdirectories' forms (bounded),
    a sample of its files and, with ``manifest``, every file's mode and blob id."""
    root = os.fsencode(path)
    budget = [max_files, max_bytes]
    st = _lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        mode, oid = _leaf(root, st, budget)
        name = os.path.basename(root)
        alone = distinctive_leaf(name, oid)
        return CopyFacts(Form(oid, 1, alone), (), ((name.decode(errors="surrogateescape"), oid),)
                         if alone else (), {"": (mode, oid)} if manifest else None)
    files: dict[str, tuple[bytes, bytes]] | None = {} if manifest else None
    sample: list[tuple[bytes, str]] = []  # a max-heap by blob id, as (negated id, path)
    dirs: list[tuple[int, str, Form]] = []
    # iterative post-order: store paths can be deeper than Python's recursion limit
    stack: list[tuple[bytes, str, list[bytes], list[tuple[bytes, bytes, bytes]], list[int], list[bool]]] = [
        (root, "", _names(root), [], [0], [False])]
    while True:
        directory, rel, names, items, count, distinctive = stack[-1]
        if names:
            name = names.pop()
            child = directory + b"/" + name
            child_rel = rel + name.decode(errors="surrogateescape")
            st = _lstat(child)
            if stat.S_ISDIR(st.st_mode):
                stack.append((child, child_rel + "/", _names(child), [], [0], [False]))
                continue
            mode, oid = _leaf(child, st, budget)
            items.append((mode, name, oid))
            count[0] += 1
            if distinctive_leaf(name, oid):
                distinctive[0] = True
                if not child_rel.startswith(".git/"):
                    _keep_smallest(sample, oid, child_rel)
            if files is not None:
                files[child_rel] = (mode, oid)
            continue
        stack.pop()
        form = Form(tree_id(items), count[0], distinctive[0])
        if not stack:
            dirs.sort()
            return CopyFacts(form, tuple((d, f) for _, d, f in dirs[:MAX_DIRS]),
                             tuple(sorted((p, bytes(~b & 0xFF for b in o)) for o, p in sample)), files)
        depth = rel.count("/")
        if form.identifying and depth <= MAX_DEPTH and not rel.startswith(".git/"):
            dirs.append((depth, rel.rstrip("/"), form))
        parent = stack[-1]
        parent[3].append((_DIR, os.path.basename(directory), form.oid))
        parent[4][0] += form.files
        parent[5][0] = parent[5][0] or form.distinctive


def _keep_smallest(heap: list[tuple[bytes, str]], oid: bytes, path: str) -> None:
    """Keep the :data:`SAMPLES` smallest blob ids seen (a heap of complemented ids: its top is the
    largest kept)."""
    import heapq

    key = bytes(~b & 0xFF for b in oid)
    if len(heap) < SAMPLES:
        heapq.heappush(heap, (key, path))
    elif key > heap[0][0]:
        heapq.heapreplace(heap, (key, path))


def _unreadable(what: str, path: bytes, e: OSError) -> BuildrefError:
    """A store copy that cannot be read: for good (BadArchive), or only for now (Transient: out of
    descriptors or memory, an I/O error), when it is to be read again later."""
    cls = Transient if transient(e) else BadArchive
    return cls(f"cannot {what} {os.fsdecode(path)}: {e.strerror}")


def _lstat(path: bytes) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as e:
        raise _unreadable("read", path, e) from None


def _names(path: bytes) -> list[bytes]:
    try:
        return os.listdir(path)
    except OSError as e:
        raise _unreadable("list", path, e) from None


def _leaf(path: bytes, st: os.stat_result, budget: list[int]) -> tuple[bytes, bytes]:
    budget[0] -= 1
    if stat.S_ISLNK(st.st_mode):
        return _LINK, blob_id(os.readlink(path))
    if not stat.S_ISREG(st.st_mode):
        raise BadArchive(f"{os.fsdecode(path)} is neither a file, a symlink nor a directory")
    budget[1] -= st.st_size
    if budget[0] < 0 or budget[1] < 0:
        raise TooLarge(f"{os.fsdecode(path)}: more files or bytes than a form is computed for")
    h = hashlib.sha1(b"blob %d\0" % st.st_size, usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise _unreadable("read", path, e) from None
    return (_EXEC if st.st_mode & 0o100 else _FILE), h.digest()
