"""NAR (Nix ARchive) serialisation, streamed into a hash: framing helpers and a file system walker.

The framing helpers are shared with the git tree serialiser (``buildref.git.tree_nar``): both build
the same byte stream, one from disk, one from the git object database.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from buildref.errors import BadArchive
from buildref.nix.hashes import Hash, HashAlgo

Sink = Callable[[bytes], object]

_READ_CHUNK = 1 << 20


def nar_str(data: bytes) -> bytes:
    """A NAR string: u64 little-endian length, the bytes, zero padding to a multiple of 8."""
    n = len(data)
    return n.to_bytes(8, "little") + data + b"\0" * (-n % 8)


def padding(length: int) -> bytes:
    return b"\0" * (-length % 8)


MAGIC = nar_str(b"nix-archive-1")
OPEN = nar_str(b"(")
CLOSE = nar_str(b")")
_TYPE = nar_str(b"type")
REGULAR_HEADER = OPEN + _TYPE + nar_str(b"regular") + nar_str(b"contents")
EXECUTABLE_HEADER = (
    OPEN + _TYPE + nar_str(b"regular") + nar_str(b"executable") + nar_str(b"") + nar_str(b"contents")
)
SYMLINK_HEADER = OPEN + _TYPE + nar_str(b"symlink") + nar_str(b"target")
DIRECTORY_HEADER = OPEN + _TYPE + nar_str(b"directory")
ENTRY_HEADER = nar_str(b"entry") + OPEN + nar_str(b"name")
ENTRY_NODE = nar_str(b"node")
EMPTY_DIRECTORY = DIRECTORY_HEADER + CLOSE


def regular(contents: bytes, executable: bool) -> bytes:
    """A whole regular-file node (for contents already in memory)."""
    header = EXECUTABLE_HEADER if executable else REGULAR_HEADER
    return header + nar_str(contents) + CLOSE


def symlink(target: bytes) -> bytes:
    return SYMLINK_HEADER + nar_str(target) + CLOSE


def entry_prefix(name: bytes) -> bytes:
    """What precedes a directory entry's node; the entry ends with ``CLOSE``."""
    return ENTRY_HEADER + nar_str(name) + ENTRY_NODE


def check_entry_name(name: bytes, where: str) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise BadArchive(f"invalid file name {name!r} in {where}")


@dataclass(frozen=True, slots=True)
class NarDigest:
    """The NAR hash of a file system object and the size of its NAR."""

    nar_hash: Hash
    nar_size: int


class HashingSink:
    """Feeds sha256 and counts the bytes that went through."""

    __slots__ = ("_hash", "size")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def __call__(self, data: bytes) -> None:
        self.size += len(data)
        self._hash.update(data)

    def result(self) -> NarDigest:
        return NarDigest(Hash(HashAlgo.SHA256, self._hash.digest()), self.size)


def dump_path(path: str | bytes, sink: Sink) -> None:
    """Serialise the file, symlink or directory at ``path`` (not followed) as a NAR into ``sink``."""
    sink(MAGIC)
    _dump(os.fsencode(path), sink)


def hash_path(path: str | bytes) -> NarDigest:
    sink = HashingSink()
    dump_path(path, sink)
    return sink.result()


def _lstat(path: bytes) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as e:
        raise BadArchive(f"cannot read {os.fsdecode(path)}: {e.strerror}") from None


def _sorted_names(path: bytes) -> list[bytes]:
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        raise BadArchive(f"cannot list {os.fsdecode(path)}: {e.strerror}") from None


def _dump_leaf(path: bytes, st: os.stat_result, sink: Sink) -> None:
    if stat.S_ISREG(st.st_mode):
        _dump_regular(path, st, sink)
    elif stat.S_ISLNK(st.st_mode):
        sink(symlink(os.readlink(path)))
    else:
        raise BadArchive(f"file {os.fsdecode(path)} has an unsupported type")


def _dump(root: bytes, sink: Sink) -> None:
    st = _lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        _dump_leaf(root, st, sink)
        return
    # An explicit stack instead of recursion: deep trees must not hit the recursion limit.
    sink(DIRECTORY_HEADER)
    stack = [(root, iter(_sorted_names(root)))]
    while stack:
        directory, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            sink(CLOSE + CLOSE if stack else CLOSE)  # the directory node, then its entry
            continue
        child = directory + b"/" + name
        sink(entry_prefix(name))
        st = _lstat(child)
        if stat.S_ISDIR(st.st_mode):
            sink(DIRECTORY_HEADER)
            stack.append((child, iter(_sorted_names(child))))
        else:
            _dump_leaf(child, st, sink)
            sink(CLOSE)


def _dump_regular(path: bytes, st: os.stat_result, sink: Sink) -> None:
    executable = bool(st.st_mode & stat.S_IXUSR)
    sink(EXECUTABLE_HEADER if executable else REGULAR_HEADER)
    size = st.st_size
    sink(size.to_bytes(8, "little"))
    written = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                written += len(chunk)
                if written > size:
                    break
                sink(chunk)
    except OSError as e:
        raise BadArchive(f"cannot read {os.fsdecode(path)}: {e.strerror}") from None
    if written != size:
        raise BadArchive(f"file {os.fsdecode(path)} changed size while being archived")
    sink(padding(size) + CLOSE)
