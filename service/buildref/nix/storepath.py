"""Store path computation (text, source, fixed output, derivation output) and name rules."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from buildref.errors import BadStorePath
from buildref.nix.hashes import Hash, HashAlgo, nix32_encode

DEFAULT_STORE_DIR = "/nix/store"
HASH_PART_LEN = 32
MAX_NAME_LEN = 211
# the length of a store path past the store directory: "/", the hash part, "-", the name
MAX_BASE_NAME = 1 + 32 + 1 + MAX_NAME_LEN
_NAME_CHARS = re.compile(r"[0-9a-zA-Z+\-._?=]+")
_HASH_PART = re.compile(r"[0123456789abcdfghijklmnpqrsvwxyz]{32}")


def check_name(name: str) -> str:
    """Validate a store path name as Nix 2.8 does (later Nix also rejects ``.``, ``..`` and names
    starting with ``.-``); returns it unchanged."""
    if not name:
        raise BadStorePath("store path name is empty")
    if len(name) > MAX_NAME_LEN:
        raise BadStorePath(f"store path name '{name}' is longer than {MAX_NAME_LEN} characters")
    if not _NAME_CHARS.fullmatch(name):
        bad = next(c for c in name if not _NAME_CHARS.fullmatch(c))
        raise BadStorePath(f"store path name '{name}' contains illegal character '{bad}'")
    return name


def compress_hash(digest: bytes, size: int = 20) -> bytes:
    """XOR-fold a digest to ``size`` bytes, as Nix's ``compressHash``."""
    out = bytearray(size)
    for i, byte in enumerate(digest):
        out[i % size] ^= byte
    return bytes(out)


def make_store_path(kind: str, inner: Hash, name: str, store_dir: str = DEFAULT_STORE_DIR) -> str:
    """``store_dir/nix32(compress20(sha256(kind:sha256:hex:store_dir:name)))-name``."""
    check_name(name)
    fingerprint = f"{kind}:{inner.algo.value}:{inner.hex}:{store_dir}:{name}"
    digest = hashlib.sha256(fingerprint.encode()).digest()
    return f"{store_dir}/{nix32_encode(compress_hash(digest))}-{name}"


def _type_with_references(kind: str, references: Iterable[str], self_reference: bool) -> str:
    parts = [kind, *sorted(set(references))]
    if self_reference:
        parts.append("self")
    return ":".join(parts)


def text_path(
    contents: bytes, name: str, references: Iterable[str] = (), store_dir: str = DEFAULT_STORE_DIR
) -> str:
    """Path of a text object: ``builtins.toFile`` output or a ``.drv`` file."""
    inner = Hash.of(HashAlgo.SHA256, contents)
    return make_store_path(_type_with_references("text", references, False), inner, name, store_dir)


class Ingestion(Enum):
    FLAT = ""
    RECURSIVE = "r:"


def fixed_output_path(
    method: Ingestion,
    hash_: Hash,
    name: str,
    references: Iterable[str] = (),
    self_reference: bool = False,
    store_dir: str = DEFAULT_STORE_DIR,
) -> str:
    """Path of content-addressed data: NAR+sha256 is a ``source`` path; every other method and
    algorithm goes through the ``fixed:out:`` indirection."""
    if method is Ingestion.RECURSIVE and hash_.algo is HashAlgo.SHA256:
        kind = _type_with_references("source", references, self_reference)
        return make_store_path(kind, hash_, name, store_dir)
    if references or self_reference:
        raise BadStorePath("only NAR+sha256 content-addressed paths may have references")
    inner = Hash.of(
        HashAlgo.SHA256, f"fixed:out:{method.value}{hash_.algo.value}:{hash_.hex}:".encode()
    )
    return make_store_path("output:out", inner, name, store_dir)


def source_path(
    nar_hash: Hash, name: str = "source", references: Iterable[str] = (),
    store_dir: str = DEFAULT_STORE_DIR,
) -> str:
    """Path of a NAR-hashed source tree (``fetchGit``, flake inputs, ``./dir`` copied to the store)."""
    return fixed_output_path(Ingestion.RECURSIVE, nar_hash, name, references, False, store_dir)


def output_path_name(drv_name: str, output: str) -> str:
    return drv_name if output == "out" else f"{drv_name}-{output}"


def output_path(
    drv_hash: Hash, drv_name: str, output: str, store_dir: str = DEFAULT_STORE_DIR
) -> str:
    """Path of an input-addressed derivation output, from its hashDerivationModulo."""
    return make_store_path(f"output:{output}", drv_hash, output_path_name(drv_name, output), store_dir)


@dataclass(frozen=True, slots=True)
class StorePath:
    """A parsed ``<store_dir>/<hash>-<name>`` path."""

    store_dir: str
    hash_part: str
    name: str

    @classmethod
    def parse(cls, path: str, store_dir: str = DEFAULT_STORE_DIR) -> StorePath:
        prefix = store_dir.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise BadStorePath(f"path '{path}' is not in the Nix store {store_dir}")
        base = path[len(prefix):]
        if "/" in base:
            raise BadStorePath(f"path '{path}' is inside a store object, not a store path")
        if len(base) < HASH_PART_LEN + 2 or base[HASH_PART_LEN] != "-":
            raise BadStorePath(f"path '{path}' is not a store path")
        hash_part, name = base[:HASH_PART_LEN], base[HASH_PART_LEN + 1:]
        if not _HASH_PART.fullmatch(hash_part):
            raise BadStorePath(f"path '{path}' has an invalid hash part")
        check_name(name)
        return cls(store_dir.rstrip("/"), hash_part, name)

    @property
    def base_name(self) -> str:
        return f"{self.hash_part}-{self.name}"

    def __str__(self) -> str:
        return f"{self.store_dir}/{self.base_name}"

    @property
    def is_derivation(self) -> bool:
        return self.name.endswith(".drv")

    @property
    def drv_name(self) -> str:
        """The derivation name of a ``.drv`` path."""
        if not self.is_derivation:
            raise BadStorePath(f"path '{self}' is not a derivation")
        return self.name.removesuffix(".drv")


def hash_placeholder(output: str) -> str:
    """The ``/<nix32>`` stand-in Nix writes into the env for an output whose path is not known."""
    return "/" + Hash.of(HashAlgo.SHA256, f"nix-output:{output}".encode()).nix32
