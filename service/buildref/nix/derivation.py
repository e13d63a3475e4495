"""The derivation data model: what a ``.drv`` file holds, as frozen dataclasses.

Strings that Nix copies from the Nix language (system, builder, args, env) are ``bytes``: they need
not be UTF-8. Store paths, output names and hash fields are ASCII and kept as ``str``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from buildref.errors import BadDerivation
from buildref.nix.hashes import Hash, HashAlgo
from buildref.nix.storepath import Ingestion


class OutputKind(Enum):
    INPUT_ADDRESSED = "input-addressed"
    FIXED = "fixed"
    FLOATING = "floating"
    DEFERRED = "deferred"
    IMPURE = "impure"


@dataclass(frozen=True, slots=True)
class Output:
    """One output exactly as written: ``(name, path, hashAlgo, hash)``."""

    name: str
    path: str
    hash_algo: str
    hash: str

    @property
    def kind(self) -> OutputKind:
        if self.hash == "impure":
            return OutputKind.IMPURE
        if self.hash_algo:
            return OutputKind.FIXED if self.hash else OutputKind.FLOATING
        return OutputKind.INPUT_ADDRESSED if self.path else OutputKind.DEFERRED

    @property
    def method(self) -> Ingestion:
        """How the content is hashed (fixed, floating and impure outputs)."""
        return Ingestion.RECURSIVE if self.hash_algo.startswith("r:") else Ingestion.FLAT

    @property
    def algo(self) -> HashAlgo:
        return HashAlgo.parse(self.hash_algo.removeprefix("r:"))

    @property
    def fixed_hash(self) -> Hash:
        return Hash.parse(self.hash, self.algo)

    def check(self) -> None:
        """Reject combinations Nix never writes."""
        if not self.hash_algo and not self.hash:
            return  # input-addressed or deferred: nothing more to check
        kind = self.kind
        if kind in (OutputKind.FLOATING, OutputKind.IMPURE) and self.path:
            raise BadDerivation(f"output '{self.name}' is {kind.value} but has a path")
        if kind is OutputKind.FIXED and not self.path:
            raise BadDerivation(f"fixed output '{self.name}' has no path")
        if self.hash_algo:
            algo = self.hash_algo.removeprefix("r:")
            if algo.startswith("text:"):
                algo = algo.removeprefix("text:")
            HashAlgo.parse(algo)
        if kind is OutputKind.FIXED:
            if len(self.hash) != self.algo.size * 2:
                raise BadDerivation(f"output '{self.name}' has a malformed hash '{self.hash}'")
            try:
                bytes.fromhex(self.hash)
            except ValueError:
                raise BadDerivation(f"output '{self.name}' has a malformed hash '{self.hash}'") from None


@dataclass(frozen=True, slots=True)
class InputNode:
    """Which outputs of an input derivation are used; ``children`` names outputs of derivations
    that the input itself produces (dynamic derivations, ``DrvWithVersion("xp-dyn-drv")``)."""

    outputs: tuple[str, ...]
    children: tuple[tuple[str, InputNode], ...] = ()


@dataclass(frozen=True, slots=True)
class Derivation:
    """``name`` is not in the ATerm: Nix takes it from the .drv path (``<name>.drv``)."""

    name: str
    outputs: tuple[Output, ...]
    input_drvs: tuple[tuple[str, InputNode], ...]
    input_srcs: tuple[str, ...]
    system: bytes
    builder: bytes
    args: tuple[bytes, ...]
    env: tuple[tuple[bytes, bytes], ...]
    version: str | None = None  # "xp-dyn-drv" for DrvWithVersion, None for Derive

    def env_get(self, key: bytes) -> bytes | None:
        for k, v in self.env:
            if k == key:
                return v
        return None

    @property
    def is_fixed_output(self) -> bool:
        return len(self.outputs) == 1 and self.outputs[0].kind is OutputKind.FIXED

    @property
    def is_impure(self) -> bool:
        return any(o.kind is OutputKind.IMPURE for o in self.outputs)

    @property
    def is_floating(self) -> bool:
        return any(o.kind is OutputKind.FLOATING for o in self.outputs)

    @property
    def references(self) -> tuple[str, ...]:
        """What the .drv file refers to: its input sources and input derivations."""
        return tuple(sorted({*self.input_srcs, *(p for p, _ in self.input_drvs)}))
