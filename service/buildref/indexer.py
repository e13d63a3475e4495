"""The indexing worker: turns each committed event into derivations, outputs and a build, reading
every fact from the store — never from what the event claims.

For an event it reads the built .drv and walks its input closure down to derivations already in
the index (their hashDerivationModulo is kept there), checks that every new .drv file is what its
path says, verifies the built derivation's output paths with hashDerivationModulo, and records
each output that exists in the store. Floating content-addressed outputs come from ``OUT_PATHS``
when it names them, else from Nix's realisation records.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import structlog

from buildref.db import BuildRow, Database, DrvRow, PendingEvent
from buildref.errors import BadDerivation, BuildrefError
from buildref.localstore import DrvReader
from buildref.nix.derivation import Derivation, Output, OutputKind
from buildref.nix.drvhash import DrvHash, DrvHasher, verify
from buildref.nix.storepath import StorePath, output_path_name, text_path
from buildref.process import Nix

BATCH = 64
RETRY_DELAY = 1.0
_MAX_MISMATCHES = 3


@dataclass(frozen=True, slots=True)
class Computed:
    new: list[DrvRow]
    drv: Derivation
    outputs: dict[str, str | None]  # declared or computed; None until built (floating, deferred)
    masked: DrvHash | None  # the realisation key of floating and deferred outputs


def _fixed(outputs: tuple[Output, ...]) -> tuple[str | None, str | None]:
    if len(outputs) != 1 or outputs[0].kind is not OutputKind.FIXED:
        return None, None
    out = outputs[0]
    if out.hash_algo.startswith("text:"):
        return "text", None
    return ("recursive" if out.hash_algo.startswith("r:") else "flat"), out.fixed_hash.sri


def compute(reader: DrvReader, top: str, new: list[str], known: dict[str, str]) -> Computed:
    """The pure part of indexing (runs in a thread): new derivations' rows and the top's outputs."""
    hasher = DrvHasher(reader.load, reader.store_dir, reader.split)
    for path, modulo in known.items():
        hasher.remember(path, DrvHash.decode(modulo))
    rows = []
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
        rows.append(DrvRow(
            path=path,
            name=name,
            system=sections.system.decode(errors="replace"),
            fixed_mode=mode,
            fixed_hash=fixed_hash,
            modulo=hasher.path_modulo(path).encode(),
            outputs=tuple((o.name, o.path or None) for o in sections.outputs),
            input_drvs=tuple((p, " ".join(node.outputs)) for p, node in sections.input_drvs),
            input_srcs=sections.input_srcs,
        ))
    data, drv = reader.read(top)
    mismatches = verify(top, data, drv, hasher)
    if mismatches:
        more = f" (and {len(mismatches) - _MAX_MISMATCHES} more)" if len(mismatches) > _MAX_MISMATCHES else ""
        raise BadDerivation("; ".join(str(m) for m in mismatches[:_MAX_MISMATCHES]) + more)
    outputs = {o.name: o.path or None for o in drv.outputs}
    unknown = any(p is None for p in outputs.values())
    masked = hasher.modulo(drv, mask_outputs=True) if unknown and not drv.is_impure else None
    return Computed(rows, drv, outputs, masked)


class Indexer:
    def __init__(self, db: Database, nix: Nix, store_dir: str) -> None:
        self._db = db
        self._nix = nix
        self._store_dir = store_dir
        self._wake = asyncio.Event()
        self._stopping = False
        self.indexed = 0
        self.failed = 0
        self._log = structlog.get_logger("buildref.indexer")

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Finish the pending events, then return from :meth:`run`."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            events = await self._db.pending_events(BATCH)
            if not events:
                if self._stopping:
                    return
                await self._wake.wait()
                continue
            for event in events:
                try:
                    await self.index(event)
                except Exception:  # the database itself failed: keep the event, retry later
                    self._log.exception("indexing failed; retrying later", drv=event.drv)
                    await asyncio.sleep(RETRY_DELAY)
                    break

    async def index(self, event: PendingEvent) -> None:
        start = time.perf_counter()
        try:
            new, build = await self._index(event)
        except (BuildrefError, OSError, RecursionError) as e:
            error = str(e) if isinstance(e, BuildrefError) else f"error: {e}"
            await self._db.fail_event(event.id, error)
            self.failed += 1
            self._log.warning("event failed", drv=event.drv, error=error)
            return
        self.indexed += 1
        self._log.info("indexed", drv=event.drv, outputs=dict(build.outputs), new_derivations=new,
                       ms=round((time.perf_counter() - start) * 1000, 2))

    async def _index(self, event: PendingEvent) -> tuple[int, BuildRow]:
        reader = DrvReader(self._store_dir)
        top = str(reader.drv_path(event.drv))
        new, known = await self._unknown_closure(reader, top)
        computed = await asyncio.to_thread(compute, reader, top, new, known)
        realised: list[tuple[str, str, str]] = []
        built = []
        floating = {name for name, path in computed.outputs.items() if path is None}
        found = await self._floating_paths(top, computed, event.outs) if floating else {}
        for name, declared in computed.outputs.items():
            path = declared or found.get(name)
            if path is None:
                continue
            if declared is None:
                realised.append((top, name, path))
            if os.path.lexists(path):
                built.append((name, path))
        build = BuildRow(event.id, top, event.t, tuple(built))
        await self._db.record(event.id, computed.new, realised, build)
        return len(computed.new), build

    async def _unknown_closure(self, reader: DrvReader, top: str) -> tuple[list[str], dict[str, str]]:
        """The closure of ``top`` down to derivations already indexed (``top`` itself is always
        read, to verify it), and the stored modulo hashes of the indexed ones at its edge."""
        known = await self._db.known_modulo([top])
        new = [] if top in known else [top]
        seen = {top}
        frontier = [top]
        while frontier:
            inputs = await asyncio.to_thread(_inputs_of, reader, frontier)
            fresh = [p for p in dict.fromkeys(inputs) if p not in seen]  # shared inputs once
            seen.update(fresh)
            if not fresh:
                break
            found = await self._db.known_modulo(fresh)
            known.update(found)
            frontier = [p for p in fresh if p not in found]
            new.extend(frontier)
        return new, known

    async def _floating_paths(self, top: str, computed: Computed, claimed: tuple[str, ...]) -> dict[str, str]:
        """Paths of outputs known only after the build: from ``OUT_PATHS`` when a claimed path has
        the output's name and exists, else from Nix's realisations (whose key must be ours)."""
        drv = computed.drv
        found: dict[str, str] = {}
        for output in drv.outputs:
            if computed.outputs[output.name] is not None:
                continue
            name = output_path_name(drv.name, output.name)
            for path in claimed:
                try:
                    if StorePath.parse(path, self._store_dir).name == name and os.path.lexists(path):
                        found[output.name] = path
                        break
                except BuildrefError:
                    continue
        if len(found) == sum(p is None for p in computed.outputs.values()):
            return found
        if all(o.kind is OutputKind.IMPURE for o in drv.outputs):
            return found  # impure outputs have no realisations to ask about
        try:
            realisations = await self._nix.realisations(top, self._store_dir)
        except BuildrefError as e:
            self._log.warning("no realisations", drv=top, error=str(e))
            return found
        for name, (key, path) in realisations.items():
            if name in found or computed.outputs.get(name, "") is not None:
                continue
            expected = computed.masked.hashes.get(name) if computed.masked else None
            if expected is not None and key != f"sha256:{expected.hex}!{name}":
                self._log.warning("realisation key mismatch", drv=top, output=name, key=key,
                                  expected=expected.hex)
                continue
            found[name] = path
        return found


def _inputs_of(reader: DrvReader, paths: list[str]) -> list[str]:
    result: list[str] = []
    for path in paths:
        result.extend(reader.parsed_inputs(path))  # new ones are split for hashing anyway
    return result

