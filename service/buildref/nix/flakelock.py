"""Reading ``flake.lock`` (versions 5 to 7): nodes, locked inputs of every type, ``follows``."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from buildref.errors import BadHash, BadLockFile
from buildref.nix.hashes import Hash, HashAlgo

SUPPORTED_VERSIONS = (5, 6, 7)
INPUT_TYPES = ("git", "github", "gitlab", "sourcehut", "path", "tarball", "file", "hg", "indirect")

Attr = str | int | bool
InputRef = str | tuple[str, ...]  # a node name, or a ``follows`` path from the root


@dataclass(frozen=True, slots=True)
class Locked:
    """A ``locked`` attribute set: what exactly was fetched."""

    type: str
    attrs: Mapping[str, Attr]

    def _str(self, key: str) -> str | None:
        value = self.attrs.get(key)
        return value if isinstance(value, str) else None

    def _int(self, key: str) -> int | None:
        value = self.attrs.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def nar_hash(self) -> Hash | None:
        text = self._str("narHash")
        return Hash.parse(text, HashAlgo.SHA256) if text else None

    @property
    def rev(self) -> str | None:
        return self._str("rev")

    @property
    def ref(self) -> str | None:
        return self._str("ref")

    @property
    def url(self) -> str | None:
        return self._str("url")

    @property
    def owner(self) -> str | None:
        return self._str("owner")

    @property
    def repo(self) -> str | None:
        return self._str("repo")

    @property
    def path(self) -> str | None:
        return self._str("path")

    @property
    def dir(self) -> str | None:
        return self._str("dir")

    @property
    def last_modified(self) -> int | None:
        return self._int("lastModified")

    @property
    def rev_count(self) -> int | None:
        return self._int("revCount")


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    inputs: Mapping[str, InputRef]
    locked: Locked | None  # None for the root node
    original: Mapping[str, Attr] | None
    flake: bool


@dataclass(frozen=True, slots=True)
class LockedInput:
    """An input reached from the root, by the path of input names that leads to it."""

    path: tuple[str, ...]
    node: Node


@dataclass(frozen=True, slots=True)
class FlakeLock:
    version: int
    root: str
    nodes: Mapping[str, Node]

    def resolve(self, ref: InputRef) -> Node:
        """The node an input refers to: a node name, or a ``follows`` path from the root (which may
        itself pass through inputs that follow others)."""
        if isinstance(ref, str):
            return self._node(ref)
        return self._follow(ref, ())

    def _node(self, name: str) -> Node:
        node = self.nodes.get(name)
        if node is None:
            raise BadLockFile(f"flake.lock refers to node '{name}', which it does not define")
        return node

    def _follow(self, path: tuple[str, ...], seen: tuple[tuple[str, ...], ...]) -> Node:
        if path in seen:
            raise BadLockFile(f"flake.lock has a cycle of follows through '{'/'.join(path)}'")
        node = self._node(self.root)
        for depth, name in enumerate(path):
            ref = node.inputs.get(name)
            if ref is None:
                raise BadLockFile(f"follows path '{'/'.join(path)}' names no input '{name}'")
            follows = (*seen, path[: depth + 1])
            node = self._node(ref) if isinstance(ref, str) else self._follow(ref, follows)
        return node

    def inputs(self) -> Iterator[LockedInput]:
        """Every input reachable from the root, breadth first; a node reached twice (through
        ``follows`` or sharing) is reported at its first, shortest path."""
        seen = {self.root}
        queue: list[tuple[tuple[str, ...], Node]] = [((), self._node(self.root))]
        while queue:
            path, node = queue.pop(0)
            for name in sorted(node.inputs):
                child = self.resolve(node.inputs[name])
                if child.name in seen:
                    continue
                seen.add(child.name)
                yield LockedInput((*path, name), child)
                queue.append(((*path, name), child))


def parse_lock(text: str | bytes) -> FlakeLock:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadLockFile(f"flake.lock is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadLockFile("flake.lock is not a JSON object")
    version = data.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise BadLockFile(f"flake.lock version {version!r} is not supported (only 5, 6 and 7)")
    root = data.get("root")
    nodes_json = data.get("nodes")
    if not isinstance(root, str) or not isinstance(nodes_json, dict):
        raise BadLockFile("flake.lock lacks 'root' or 'nodes'")
    nodes = {name: _node(name, value, name == root) for name, value in nodes_json.items()}
    lock = FlakeLock(version, root, nodes)
    lock.resolve(root)
    for node in nodes.values():  # every reference must lead somewhere
        for ref in node.inputs.values():
            lock.resolve(ref)
    return lock


def _node(name: str, value: Any, is_root: bool) -> Node:
    if not isinstance(value, dict):
        raise BadLockFile(f"flake.lock node '{name}' is not an object")
    inputs: dict[str, InputRef] = {}
    for input_name, ref in (value.get("inputs") or {}).items():
        if isinstance(ref, str):
            inputs[input_name] = ref
        elif isinstance(ref, list) and all(isinstance(p, str) for p in ref):
            inputs[input_name] = tuple(ref)
        else:
            raise BadLockFile(f"input '{input_name}' of node '{name}' is neither a node nor a path")
    locked_json = value.get("locked")
    locked = None
    if locked_json is not None:
        locked = _locked(name, locked_json)
    elif not is_root:
        raise BadLockFile(f"flake.lock node '{name}' has no 'locked' attributes")
    original = value.get("original")
    if original is not None and not isinstance(original, dict):
        raise BadLockFile(f"'original' of node '{name}' is not an object")
    return Node(name, inputs, locked, original, bool(value.get("flake", True)))


def _locked(name: str, value: Any) -> Locked:
    if not isinstance(value, dict):
        raise BadLockFile(f"'locked' of node '{name}' is not an object")
    kind = value.get("type")
    if kind not in INPUT_TYPES:
        raise BadLockFile(f"node '{name}' has an unknown input type {kind!r}")
    attrs: dict[str, Attr] = {}
    for key, attr in value.items():
        if not isinstance(attr, str | int | bool):
            raise BadLockFile(f"attribute '{key}' of node '{name}' is not a string, number or bool")
        attrs[key] = attr
    locked = Locked(kind, attrs)
    try:
        locked.nar_hash  # noqa: B018 - validate early, with the node's name in the message
    except BadHash as e:
        raise BadLockFile(f"node '{name}': {e.args[0]}") from None
    return locked
