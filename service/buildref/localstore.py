"""Reading .drv files out of the local store directory: the one place that opens store files."""

from __future__ import annotations

import os
from collections.abc import Iterable

from buildref.errors import BadDerivation, BadStorePath, Transient, transient
from buildref.nix.aterm import Sections, references, split
from buildref.nix.derivation import Derivation
from buildref.nix.storepath import DEFAULT_STORE_DIR, StorePath


def default_store_dir() -> str:
    return os.environ.get("NIX_STORE_DIR", DEFAULT_STORE_DIR).rstrip("/")


class DrvReader:
    """Reads, checks and parses derivations by store path, each file at most once."""

    def __init__(self, store_dir: str = DEFAULT_STORE_DIR) -> None:
        self.store_dir = store_dir
        self._prefix = store_dir + "/"
        self._data: dict[str, bytes] = {}
        self._split: dict[str, Sections] = {}
        self._decoded: dict[str, Derivation] = {}

    def drv_path(self, path: str) -> StorePath:
        """Check that ``path`` names a derivation in this store; a relative path to a store file
        (as a shell glob in the store directory gives) is accepted too. As Nix's canonPath does,
        repeated slashes, ``.`` and a trailing slash are dropped; unlike Nix, a path through ``..``
        or into a store object is refused rather than taken to mean the store path it reaches."""
        if not path.startswith(self._prefix) or "/" in path[len(self._prefix):]:
            path = self._canonical(path)
        store_path = StorePath.parse(path, self.store_dir)
        if not store_path.is_derivation:
            raise BadStorePath(f"'{path}' is not a derivation (.drv)")
        return store_path

    @staticmethod
    def _canonical(path: str) -> str:
        absolute = path if path.startswith("/") else os.getcwd() + "/" + path
        parts = [part for part in absolute.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise BadStorePath(f"path '{path}' goes through '..': give the store path itself")
        return "/" + "/".join(parts)

    def data(self, path: str) -> bytes:
        """The bytes of a .drv file named by a checked store path (see :meth:`drv_path`)."""
        data = self._data.get(path)
        if data is None:
            try:
                with open(path, "rb") as f:
                    data = self._data[path] = f.read()
            except OSError as e:
                if transient(e):  # out of descriptors, memory, an I/O error: not the file's fault
                    raise Transient(f"cannot read derivation '{path}' for now: {e.strerror}") from None
                raise BadDerivation(f"cannot read derivation '{path}': {e.strerror}") from None
        return data

    def split(self, path: str) -> tuple[bytes, Sections]:
        sections = self._split.get(path)
        if sections is None:
            path = str(self.drv_path(path))
            try:
                sections = self._split[path] = split(self.data(path))
            except BadDerivation as e:
                raise BadDerivation(f"{path}: {e.args[0]}") from None
        return self._data[path], sections

    def read(self, path: str) -> tuple[bytes, Derivation]:
        data, sections = self.split(path)
        drv = self._decoded.get(path)
        if drv is None:
            drv = self._decoded[path] = sections.decode(self.drv_path(path).drv_name)
        return data, drv

    def load(self, path: str) -> Derivation:
        return self.read(path)[1]

    def _inner(self, path: str, referrer: str) -> str:
        """A path named inside a .drv: cheaply checked to stay a file directly in the store."""
        rest = path[len(self._prefix):]
        if not path.startswith(self._prefix) or "/" in rest or rest in ("", ".", ".."):
            raise BadDerivation(f"{referrer}: input '{path}' is not in the store {self.store_dir}")
        return path

    def select(self, drvs: Iterable[str], recursive: bool) -> list[str]:
        """The store paths of ``drvs``, checked; with ``recursive``, their whole closure."""
        return self.closure(drvs) if recursive else [str(self.drv_path(p)) for p in drvs]

    def inputs(self, path: str) -> list[str]:
        """The derivations a checked drv path refers to: input derivations, and input sources that
        are themselves .drv files (``drvPath`` in a string). Reads only the head of the file;
        splitting or parsing the derivation checks the rest."""
        try:
            drvs, srcs = references(self.data(path))
        except BadDerivation as e:
            raise BadDerivation(f"{path}: {e.args[0]}") from None
        return self._drv_inputs(path, drvs, srcs)

    def parsed_inputs(self, path: str) -> list[str]:
        """As :meth:`inputs`, from the whole file checked and split (when it will be anyway)."""
        _, sections = self.split(path)
        return self._drv_inputs(path, [p for p, _ in sections.input_drvs], sections.input_srcs)

    def _drv_inputs(self, path: str, drvs: Iterable[str], srcs: Iterable[str]) -> list[str]:
        return [self._inner(p, path) for p in (*drvs, *(s for s in srcs if s.endswith(".drv")))]

    def closure(self, roots: Iterable[str]) -> list[str]:
        """The derivations ``roots`` depend on, roots included (see :meth:`inputs`)."""
        seen: set[str] = set()
        order: list[str] = []
        stack = [str(self.drv_path(r)) for r in roots]
        while stack:
            path = stack.pop()
            if path in seen:
                continue
            seen.add(path)
            order.append(path)
            stack.extend(p for p in self.inputs(path) if p not in seen)
        return order
