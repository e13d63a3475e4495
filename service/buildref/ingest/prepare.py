"""The pure part of indexing a build (run in a thread): read each new derivation of the closure,
check it is what its store path says, compute its hashDerivationModulo, and verify the built
derivation's output paths. No database and no sockets: only .drv files, through a DrvReader."""

from __future__ import annotations

import re
from dataclasses import dataclass

from buildref.errors import BadDerivation
from buildref.localstore import DrvReader
from buildref.nix.derivation import Derivation, Output, OutputKind
from buildref.nix.drvhash import DrvHash, DrvHasher, verify
from buildref.nix.storepath import text_path
from buildref.store.api import DerivationRecord

_MAX_MISMATCHES = 3


@dataclass(frozen=True, slots=True)
class PreparedBuild:
    new: list[DerivationRecord]
    drv: Derivation
    outputs: dict[str, str | None]  # declared or computed; None until built (floating, deferred)
    contents: tuple[str, ...]  # input sources and fixed outputs whose content the index is to learn
    # hashDerivationModulo with outputs masked: the key of Nix's realisations of floating and
    # deferred outputs (None when every output path is known from the drv itself)
    realisation_key: DrvHash | None
    path: str  # the built derivation's


def _fixed(outputs: tuple[Output, ...]) -> tuple[str | None, str | None]:
    if len(outputs) != 1 or outputs[0].kind is not OutputKind.FIXED:
        return None, None
    out = outputs[0]
    if out.hash_algo.startswith("text:"):
        return "text", None
    return ("recursive" if out.hash_algo.startswith("r:") else "flat"), out.fixed_hash.sri


_REV = re.compile(rb"(?<![0-9a-f])[0-9a-f]{40}(?![0-9a-f])")
_HINT_KEYS = (b"rev", b"url", b"urls")  # fetchgit's rev; fetchFromGitHub's .../archive/<rev>.tar.gz


def rev_hint(env: tuple[tuple[bytes, bytes], ...]) -> tuple[str | None, str | None]:
    """The git revision a fixed-output derivation says it fetches, when it names one, and the file
    of it when a URL names one (``.../<rev>/<path>``: a raw file from a forge)."""
    for key, value in env:
        if key in _HINT_KEYS and (m := _REV.search(value)):
            rest = value[m.end():].split(b" ")[0].split(b"?")[0].split(b"#")[0]
            path = rest[1:].decode(errors="replace") if key != b"rev" and rest.startswith(b"/") else None
            return m.group().decode(), path or None
    return None, None


def prepare_build(reader: DrvReader, top: str, new: list[str], known: dict[str, str]) -> PreparedBuild:
    """Records for the ``new`` derivations of ``top``'s closure (``known``: modulo hashes of the
    indexed ones at its edge) and ``top``'s verified outputs."""
    hasher = DrvHasher(reader.load, reader.store_dir, reader.split)
    for path, modulo in known.items():
        hasher.remember(path, DrvHash.decode(modulo))
    records = []
    contents: list[str] = []
    store_dir = reader.store_dir
    for path in new:
        # only the parts hashing and the index need: the environment stays undecoded
        data, sections = reader.split(path)
        name = path[len(store_dir) + 34:-4]  # <store>/<32-char hash>-<name>.drv, checked by split
        references = sorted({*sections.input_srcs, *(p for p, _ in sections.input_drvs)})
        own = text_path(data, name + ".drv", references, store_dir)
        if own != path:
            raise BadDerivation(f"{path}: its contents belong at {own}: the store is corrupt")
        mode, fixed_hash = _fixed(sections.outputs)
        hints = rev_hint(sections.env) if mode else (None, None)
        if mode == "recursive":
            contents += [o.path for o in sections.outputs if o.path]
        contents += [s for s in sections.input_srcs if not s.endswith(".drv")]
        records.append(DerivationRecord(
            path=path,
            name=name,
            system=sections.system.decode(errors="replace"),
            fixed_mode=mode,
            fixed_hash=fixed_hash,
            modulo=hasher.path_modulo(path).encode(),
            outputs=tuple((o.name, o.path or None) for o in sections.outputs),
            input_drvs=tuple((p, " ".join(node.outputs)) for p, node in sections.input_drvs),
            input_srcs=sections.input_srcs,
            rev_hint=hints[0],
            path_hint=hints[1] if mode == "flat" else None,
        ))
    data, drv = reader.read(top)
    mismatches = verify(top, data, drv, hasher)
    if mismatches:
        more = f" (and {len(mismatches) - _MAX_MISMATCHES} more)" if len(mismatches) > _MAX_MISMATCHES else ""
        raise BadDerivation("; ".join(str(m) for m in mismatches[:_MAX_MISMATCHES]) + more)
    outputs = {o.name: o.path or None for o in drv.outputs}
    unknown = any(p is None for p in outputs.values())
    key = hasher.modulo(drv, mask_outputs=True) if unknown and not drv.is_impure else None
    if _fixed(drv.outputs)[0] == "recursive":  # built now: its output is there to learn, if it was not
        contents += [p for p in outputs.values() if p]
    return PreparedBuild(records, drv, outputs, tuple(dict.fromkeys(contents)), key, top)


def inputs_of(reader: DrvReader, paths: list[str]) -> list[str]:
    """The derivations the drvs at ``paths`` refer to (each new one is split for hashing anyway)."""
    result: list[str] = []
    for path in paths:
        result.extend(reader.parsed_inputs(path))
    return result
