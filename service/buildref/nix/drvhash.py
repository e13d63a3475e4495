"""hashDerivationModulo (as Nix 2.8 computes it), the output paths it implies, the path of a .drv
file, and the checks ``buildref drv verify`` makes.

Input derivations are read through a loader the caller hands in, so this module does no I/O itself;
results are memoised per drv path, so hashing a whole closure reads and hashes each .drv once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from buildref.errors import BadDerivation
from buildref.nix.aterm import Sections, print_drv, print_input_drvs
from buildref.nix.derivation import Derivation, InputNode, Output, OutputKind
from buildref.nix.hashes import Hash, HashAlgo
from buildref.nix.storepath import (
    DEFAULT_STORE_DIR,
    StorePath,
    fixed_output_path,
    hash_placeholder,
    output_path,
    output_path_name,
    text_path,
)

Loader = Callable[[str], Derivation]
# A drv path's bytes and their validated parts: lets the hasher skip decoding canonical files.
Splitter = Callable[[str], tuple[bytes, Sections]]

_IMPURE_HASH = Hash.of(HashAlgo.SHA256, b"impure")


class DrvHashKind(Enum):
    REGULAR = "regular"
    DEFERRED = "deferred"  # depends on outputs whose paths are known only after a build


@dataclass(frozen=True, slots=True)
class DrvHash:
    hashes: Mapping[str, Hash]  # per output name
    kind: DrvHashKind

    def encode(self) -> str:
        """A compact text form, for keeping in the index: ``kind:out=hex,dev=hex``."""
        return self.kind.value + ":" + ",".join(f"{name}={h.hex}" for name, h in self.hashes.items())

    @classmethod
    def decode(cls, text: str) -> DrvHash:
        kind, _, pairs = text.partition(":")
        hashes = {}
        for pair in pairs.split(","):
            name, _, hex_digest = pair.partition("=")
            hashes[name] = Hash(HashAlgo.SHA256, bytes.fromhex(hex_digest))
        return cls(hashes, DrvHashKind(kind))


def drv_path(data: bytes, drv: Derivation, store_dir: str = DEFAULT_STORE_DIR) -> str:
    """Where Nix stores a .drv file with these bytes."""
    return text_path(data, drv.name + ".drv", drv.references, store_dir)


def fixed_path(drv_name: str, output: Output, store_dir: str = DEFAULT_STORE_DIR) -> str:
    """The path of a fixed output, from its declared hash (what Nix prints, whatever is written)."""
    return fixed_output_path(
        output.method, output.fixed_hash, output_path_name(drv_name, output.name), store_dir=store_dir
    )


class DrvHasher:
    """hashDerivationModulo over a closure, memoised by drv path."""

    def __init__(self, load: Loader, store_dir: str = DEFAULT_STORE_DIR,
                 split: Splitter | None = None) -> None:
        self._load = load
        self._split = split
        self.store_dir = store_dir
        self._memo: dict[str, DrvHash] = {}

    def _fixed(self, drv_name: str, outputs: tuple[Output, ...]) -> DrvHash:
        hashes = {
            o.name: Hash.of(
                HashAlgo.SHA256,
                f"fixed:out:{o.hash_algo}:{o.hash}:{fixed_path(drv_name, o, self.store_dir)}".encode(),
            )
            for o in outputs
        }
        return DrvHash(hashes, DrvHashKind.REGULAR)

    def _replaced_inputs(self, input_drvs: tuple[tuple[str, InputNode], ...],
                         kind: DrvHashKind) -> tuple[dict[str, set[str]], DrvHashKind]:
        """Input derivations keyed by their (memoised) modulo hash, as hashDerivationModulo
        prints them; and whether any makes this derivation deferred."""
        replaced: dict[str, set[str]] = {}
        for path, node in input_drvs:
            if node.children:  # an output of a dynamic derivation: unknown until built
                kind = DrvHashKind.DEFERRED
            result = self.path_modulo(path)
            if result.kind is DrvHashKind.DEFERRED:
                kind = DrvHashKind.DEFERRED
            for name in node.outputs:
                h = result.hashes.get(name)
                if h is None:
                    raise BadDerivation(f"input derivation {path} has no output '{name}'")
                replaced.setdefault(h.hex, set()).add(name)
        return replaced, kind

    def _modulo_canonical(self, path: str, data: bytes, sections: Sections) -> DrvHash:
        """The unmasked modulo hash of a canonical file: its own bytes with the input list
        replaced, which is what printing the parsed derivation would give, without decoding it."""
        outputs = sections.outputs
        if len(outputs) == 1 and outputs[0].kind is OutputKind.FIXED:
            return self._fixed(StorePath.parse(path, self.store_dir).drv_name, outputs)
        if any(o.kind is OutputKind.IMPURE for o in outputs):
            return DrvHash({o.name: _IMPURE_HASH for o in outputs}, DrvHashKind.DEFERRED)
        floating = any(o.kind is OutputKind.FLOATING for o in outputs)
        replaced, kind = self._replaced_inputs(
            sections.input_drvs, DrvHashKind.DEFERRED if floating else DrvHashKind.REGULAR)
        assert sections.inputs_span is not None
        start, end = sections.inputs_span
        text = data[:start] + print_input_drvs(sorted(replaced.items())) + data[end:]
        digest = Hash(HashAlgo.SHA256, hashlib.sha256(text).digest())
        return DrvHash({o.name: digest for o in outputs}, kind)

    def modulo(self, drv: Derivation, mask_outputs: bool) -> DrvHash:
        if drv.is_fixed_output:
            return self._fixed(drv.name, drv.outputs)
        if drv.is_impure:
            return DrvHash({o.name: _IMPURE_HASH for o in drv.outputs}, DrvHashKind.DEFERRED)

        kind = DrvHashKind.DEFERRED if drv.is_floating else DrvHashKind.REGULAR
        replaced, kind = self._replaced_inputs(drv.input_drvs, kind)
        inputs = tuple((key, InputNode(tuple(sorted(outs)))) for key, outs in sorted(replaced.items()))

        if mask_outputs:
            names = {o.name.encode() for o in drv.outputs}
            text = print_drv(
                drv,
                input_drvs=inputs,
                outputs=tuple(Output(o.name, "", o.hash_algo, o.hash) for o in drv.outputs),
                env=tuple((k, b"" if k in names else v) for k, v in drv.env),
            )
        else:
            text = print_drv(drv, input_drvs=inputs)
        digest = Hash(HashAlgo.SHA256, hashlib.sha256(text).digest())
        return DrvHash({o.name: digest for o in drv.outputs}, kind)

    def remember(self, path: str, result: DrvHash) -> None:
        """Seed the memo with a result computed earlier (kept in the index)."""
        self._memo[path] = result

    def path_modulo(self, path: str) -> DrvHash:
        """The unmasked modulo hash of the derivation at ``path``, computing its inputs first
        (iteratively: dependency chains may be far deeper than Python's recursion limit)."""
        done = self._memo.get(path)
        if done is not None:
            return done
        pending = [path]
        expanded: set[str] = set()
        while pending:
            current = pending[-1]
            if current in self._memo:
                pending.pop()
                continue
            data, sections = self._split(current) if self._split else (b"", None)
            input_drvs = sections.input_drvs if sections is not None else self._load(current).input_drvs
            if current not in expanded:
                expanded.add(current)
                missing = [p for p, _ in input_drvs if p not in self._memo]
                if missing:
                    pending.extend(missing)
                    continue
            elif any(p not in self._memo for p, _ in input_drvs):
                raise BadDerivation(f"derivation {current} depends on itself")
            if sections is not None and sections.canonical:
                self._memo[current] = self._modulo_canonical(current, data, sections)
            else:
                self._memo[current] = self.modulo(self._load(current), mask_outputs=False)
            expanded.discard(current)
            pending.pop()
        return self._memo[path]

    def output_paths(self, drv: Derivation) -> dict[str, str | None]:
        """The path each output should have; ``None`` where Nix cannot know it before a build."""
        if drv.is_fixed_output:
            return {o.name: fixed_path(drv.name, o, self.store_dir) for o in drv.outputs}
        if drv.is_floating or drv.is_impure:
            return {o.name: None for o in drv.outputs}
        result = self.modulo(drv, mask_outputs=True)
        if result.kind is DrvHashKind.DEFERRED:
            return {o.name: None for o in drv.outputs}
        return {
            o.name: output_path(result.hashes[o.name], drv.name, o.name, self.store_dir)
            for o in drv.outputs
        }


@dataclass(frozen=True, slots=True)
class Mismatch:
    drv_path: str
    what: str
    recorded: str
    computed: str

    def __str__(self) -> str:
        return f"{self.drv_path}: {self.what}: recorded {self.recorded!r}, computed {self.computed!r}"


def verify(path: str, data: bytes, drv: Derivation, hasher: DrvHasher) -> list[Mismatch]:
    """Everything in ``drv`` that Nix derives from the rest of it, recomputed and compared."""
    found: list[Mismatch] = []
    own = drv_path(data, drv, hasher.store_dir)
    if own != path:
        found.append(Mismatch(path, "derivation path", path, own))
    expected = hasher.output_paths(drv)
    for output in drv.outputs:
        computed = expected[output.name]
        kind = output.kind
        recorded_kinds = (OutputKind.INPUT_ADDRESSED, OutputKind.FIXED, OutputKind.DEFERRED)
        if kind in recorded_kinds and (computed or "") != output.path:
            what = f"output '{output.name}' path"
            found.append(Mismatch(path, what, output.path or "(deferred)", computed or "(deferred)"))
        env_value = drv.env_get(output.name.encode())
        if env_value is not None:
            # Nix 2.8 leaves a deferred output's variable empty and puts a placeholder in for
            # floating and impure outputs, whose paths are known only after the build.
            if computed is not None:
                want = computed
            elif kind is OutputKind.DEFERRED:
                want = ""
            else:
                want = hash_placeholder(output.name)
            if env_value != want.encode():
                what = f"environment variable '{output.name}'"
                found.append(Mismatch(path, what, env_value.decode(errors="replace"), want))
    return found
