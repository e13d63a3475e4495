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
from collections.abc import Callable

import structlog

from buildref.errors import BuildrefError, IndexLost, Kind, Transient, transient
from buildref.ingest.prepare import PreparedBuild, inputs_of, prepare_build
from buildref.localstore import DrvReader
from buildref.nix.derivation import OutputKind
from buildref.nix.storepath import StorePath, output_path_name
from buildref.process import Nix
from buildref.store.api import BuildRecord, PendingEvent, Realised, Store

BATCH = 64
RETRY_DELAY = 1.0  # seconds before the first retry of an event that could not be indexed for now ...
MAX_RETRY_DELAY = 60.0  # ... doubled at each failure in a row, up to this


class Indexer:
    def __init__(self, store: Store, nix: Nix, store_dir: str, on_contents: Callable[[], None]) -> None:
        self._store = store
        self._on_contents = on_contents  # new store paths to learn the content of
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
        delay = RETRY_DELAY
        while True:
            self._wake.clear()
            events = await self._store.events.pending(BATCH)
            if not events:
                if self._stopping:
                    return
                await self._wake.wait()
                continue
            for event in events:
                try:
                    await self.index(event)
                except IndexLost:  # nothing written from now on would survive: the service stops
                    raise
                except BuildrefError as e:  # unavailable for now (the store, the index): keep the event
                    self._log.warning("indexing deferred; retrying later", drv=event.drv, error=str(e),
                                      retry_in=delay)
                except Exception:  # a bug, or the database failed unexpectedly: keep the event
                    self._log.exception("indexing failed; retrying later", drv=event.drv, retry_in=delay)
                else:
                    delay = RETRY_DELAY
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                break

    async def index(self, event: PendingEvent) -> None:
        start = time.perf_counter()
        error: str | None = None
        try:
            new, build = await self._index(event)
        except OSError as e:
            if transient(e):
                raise Transient(str(e)) from None
            error = f"error: {e}"
        except BuildrefError as e:
            if e.kind is Kind.UNAVAILABLE:  # the index, or the store, cannot be used for now
                raise
            error = str(e)
        except RecursionError as e:
            error = f"error: {e}"
        if error is not None:
            await self._store.events.fail(event.id, error)
            self.failed += 1
            self._log.warning("event failed", drv=event.drv, error=error)
            return
        self.indexed += 1
        self._log.info("indexed", drv=event.drv, outputs=dict(build.outputs), new_derivations=new,
                       ms=round((time.perf_counter() - start) * 1000, 2))

    async def _index(self, event: PendingEvent) -> tuple[int, BuildRecord]:
        reader = DrvReader(self._store_dir)
        top = str(reader.drv_path(event.drv))
        new, known = await self._unknown_closure(reader, top)
        prepared = await asyncio.to_thread(prepare_build, reader, top, new, known)
        realised: list[Realised] = []
        built = []
        floating = {name for name, path in prepared.outputs.items() if path is None}
        found = await self._floating_paths(top, prepared, event.outs) if floating else {}
        for name, declared in prepared.outputs.items():
            path = declared or found.get(name)
            if path is None:
                continue
            if declared is None:
                realised.append(Realised(top, name, path))
            if os.path.lexists(path):
                built.append((name, path))
        build = BuildRecord(event.id, top, event.t, tuple(built), tuple(prepared.new), tuple(realised),
                            prepared.contents)
        await self._store.builds.record([build])
        if prepared.contents:
            self._on_contents()
        return len(prepared.new), build

    async def _known_modulo(self, paths: list[str]) -> dict[str, str]:
        async with self._store.reading() as reader:
            return await reader.builds.known_modulo(paths)

    async def _unknown_closure(self, reader: DrvReader, top: str) -> tuple[list[str], dict[str, str]]:
        """The closure of ``top`` down to derivations already indexed (``top`` itself is always
        read, to verify it), and the stored modulo hashes of the indexed ones at its edge."""
        known = await self._known_modulo([top])
        new = [] if top in known else [top]
        seen = {top}
        frontier = [top]
        while frontier:
            inputs = await asyncio.to_thread(inputs_of, reader, frontier)
            fresh = [p for p in dict.fromkeys(inputs) if p not in seen]  # shared inputs once
            seen.update(fresh)
            if not fresh:
                break
            found = await self._known_modulo(fresh)
            known.update(found)
            frontier = [p for p in fresh if p not in found]
            new.extend(frontier)
        return new, known

    async def _floating_paths(self, top: str, prepared: PreparedBuild, claimed: tuple[str, ...]
                             ) -> dict[str, str]:
        """Paths of outputs known only after the build: from ``OUT_PATHS`` when a claimed path has
        the output's name and exists, else from Nix's realisations (whose key must be ours)."""
        drv = prepared.drv
        found: dict[str, str] = {}
        for output in drv.outputs:
            if prepared.outputs[output.name] is not None:
                continue
            name = output_path_name(drv.name, output.name)
            for path in claimed:
                try:
                    if StorePath.parse(path, self._store_dir).name == name and os.path.lexists(path):
                        found[output.name] = path
                        break
                except BuildrefError:
                    continue
        if len(found) == sum(p is None for p in prepared.outputs.values()):
            return found
        if all(o.kind is OutputKind.IMPURE for o in drv.outputs):
            return found  # impure outputs have no realisations to ask about
        try:
            realisations = await self._nix.realisations(top, self._store_dir)
        except BuildrefError as e:
            self._log.warning("no realisations", drv=top, error=str(e))
            return found
        for name, (key, path) in realisations.items():
            if name in found or prepared.outputs.get(name, "") is not None:
                continue
            ours = prepared.realisation_key
            expected = ours.hashes.get(name) if ours else None
            if expected is not None and key != f"sha256:{expected.hex}!{name}":
                self._log.warning("realisation key mismatch", drv=top, output=name, key=key,
                                  expected=expected.hex)
                continue
            found[name] = path
        return found

