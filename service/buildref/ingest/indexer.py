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
import contextlib
import os
import time
from collections.abc import Callable, Sequence

import structlog

from buildref.errors import BuildrefError, IndexLost, Kind, Transient, transient
from buildref.ingest.prepare import PreparedBuild, inputs_of, prepare_build
from buildref.localstore import DrvReader
from buildref.nix.derivation import OutputKind
from buildref.nix.storepath import StorePath, output_path_name
from buildref.process import Nix
from buildref.store.api import BuildRecord, DerivationRecord, PendingEvent, Realised, Store

BATCH = 64
LINGER = 0.02  # seconds the indexer waits, once woken, for more events to index with the first
RETRY_DELAY = 0.5  # seconds before trying again what could not be indexed for now (the index or the
MAX_RETRY_DELAY = 5.0  # store unavailable), doubled each time up to this: how soon indexing resumes


class Indexer:
    """Indexes pending events in batches: each event is read and verified on its own (a bad one
    fails alone), then the batch's builds are recorded in one transaction. When the index cannot
    be written (a fleet's PostgreSQL is away), the events stay pending and the batch is tried
    again, with backoff: no event ever fails for it."""

    def __init__(self, store: Store, nix: Nix, store_dir: str, on_contents: Callable[[], None],
                 builder: str | None = None, on_uploads: Callable[[], None] | None = None) -> None:
        self._store = store
        self._on_contents = on_contents  # new store paths to learn the content of
        self._on_uploads = on_uploads  # with [upload]: outputs queued to be copied
        self._nix = nix
        self._store_dir = store_dir
        self._builder = builder
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self.indexed = 0
        self.failed = 0
        self.unavailable: str | None = None  # why the index could not be written, while it cannot
        self._log = structlog.get_logger("buildref.indexer")

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Finish the pending events (unless the index is unavailable), then return from :meth:`run`."""
        self._stopped.set()
        self._wake.set()

    async def run(self) -> None:
        delay = RETRY_DELAY
        while True:
            self._wake.clear()
            events = await self._store.events.pending(BATCH)
            if not events:
                if self._stopped.is_set():
                    return
                await self._wake.wait()
                # under load more events arrive meanwhile: one batch (one transaction) takes them
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), LINGER)
                continue
            try:
                await self.index_batch(events)
            except IndexLost:  # nothing written from now on would survive: the service stops
                raise
            except Exception as e:  # unavailable for now (the index, the store), or a bug: kept pending
                if self.unavailable is None:
                    self._log.error("indexing deferred; events stay pending and are retried",
                                    error=str(e), kind=type(e).__name__, retry_in=delay,
                                    exc_info=not isinstance(e, BuildrefError))
                self.unavailable = str(e) if isinstance(e, BuildrefError) else f"error: {e}"
                if self._stopped.is_set():
                    return  # indexed at next start
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            if self.unavailable is not None:
                self._log.info("index available again")
                self.unavailable = None
            delay = RETRY_DELAY

    async def index(self, event: PendingEvent) -> None:
        await self.index_batch([event])

    async def index_batch(self, events: Sequence[PendingEvent]) -> None:
        """Index ``events``; an event that cannot be indexed fails alone, and one that cannot be
        indexed for now (the index, or the store, unavailable) raises, recording nothing."""
        prepared: list[tuple[BuildRecord, int, float]] = []
        reader = DrvReader(self._store_dir)  # each file read once per batch
        known = _Known(self._store)
        await known.prefetch(reader, [e.drv for e in events])
        # the steady state, where each closure stops at derivations already known, in one thread
        quick = await asyncio.to_thread(known.prepare_all, reader, [e.drv for e in events])
        for (first, seconds), event in zip(quick, events, strict=True):
            start = time.perf_counter()
            try:
                if isinstance(first, BaseException):
                    raise first
                if first is None:  # the index is to be asked about more of its closure
                    build = await self._index(reader, event, known)
                else:
                    known.add(first.new)
                    build = await self._build(event, first)
            except (BuildrefError, OSError, RecursionError) as e:
                error = _failure(e)
                await self._store.events.fail(event.id, error)
                self.failed += 1
                self._log.warning("event failed", drv=event.drv, error=error)
                continue
            known.add(build.new)
            prepared.append((build, len(build.new), seconds + time.perf_counter() - start))
        if not prepared:
            return
        if self._on_uploads is not None:
            # queued before the build is recorded: a crash between the two queues them again
            # (the queue keeps a path once), never loses them
            outputs = {path for build, _, _ in prepared for _, path in build.outputs}
            await self._store.uploads.enqueue(outputs, time.time())
        await self._store.builds.record([build for build, _, _ in prepared])
        if self._on_uploads is not None:
            self._on_uploads()
        if any(build.contents for build, _, _ in prepared):
            self._on_contents()
        for build, new, seconds in prepared:
            self.indexed += 1
            self._log.info("indexed", drv=build.drv_path, outputs=dict(build.outputs), new_derivations=new,
                           ms=round(seconds * 1000, 2))

    async def _index(self, reader: DrvReader, event: PendingEvent, batch: _Known) -> BuildRecord:
        top = str(reader.drv_path(event.drv))
        new, known = await self._unknown_closure(reader, top, batch)
        return await self._build(event, await asyncio.to_thread(prepare_build, reader, top, new, known))

    async def _build(self, event: PendingEvent, prepared: PreparedBuild) -> BuildRecord:
        """The build of a prepared event: its outputs found in the store (floating ones too)."""
        top = prepared.path
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
        return BuildRecord(event.id, top, event.t, tuple(built), tuple(prepared.new), tuple(realised),
                           prepared.contents, self._builder)

    async def _unknown_closure(self, reader: DrvReader, top: str, batch: _Known
                               ) -> tuple[list[str], dict[str, str]]:
        """The closure of ``top`` down to derivations already indexed or new in this batch
        (``top`` itself is always read, to verify it), and the modulo hashes of those at its edge."""
        known = await batch.of([top])
        new = [] if top in known else [top]
        seen = {top}
        frontier = [top]
        while frontier:
            inputs = await asyncio.to_thread(inputs_of, reader, frontier)
            fresh = [p for p in dict.fromkeys(inputs) if p not in seen]  # shared inputs once
            seen.update(fresh)
            if not fresh:
                break
            found = await batch.of(fresh)
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



def _failure(e: BuildrefError | OSError | RecursionError) -> str:
    """Why an event fails for good; raises when it is only unavailable for now (kept pending)."""
    if isinstance(e, OSError):
        if transient(e):
            raise Transient(str(e)) from None
        return f"error: {e}"
    if isinstance(e, BuildrefError):
        if e.kind is Kind.UNAVAILABLE:  # the index, or the store, cannot be used for now
            raise e
        return str(e)
    return f"error: {e}"


class _Known:
    """Modulo hashes of derivations for one batch: each path asked of the index at most once (the
    batch's tops and their inputs in one question), and those new in the batch."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._modulo: dict[str, str] = {}
        self._absent: set[str] = set()

    async def of(self, paths: list[str]) -> dict[str, str]:
        ask = [p for p in dict.fromkeys(paths) if p not in self._modulo and p not in self._absent]
        if ask:
            async with self._store.reading() as reader:
                found = await reader.builds.known_modulo(ask)
            self._modulo.update(found)
            self._absent.update(p for p in ask if p not in found)
        return {p: self._modulo[p] for p in paths if p in self._modulo}

    def add(self, records: Sequence[DerivationRecord]) -> None:
        for d in records:
            self._modulo[d.path] = d.modulo
            self._absent.discard(d.path)

    def prepare_all(self, reader: DrvReader, drvs: list[str]
                    ) -> list[tuple[PreparedBuild | BaseException | None, float]]:
        """Each of ``drvs`` prepared (runs in a thread), with the seconds it took, when its closure
        stops at derivations known now (its inputs); None when the index is to be asked more."""
        results: list[tuple[PreparedBuild | BaseException | None, float]] = []
        modulo = dict(self._modulo)  # and the derivations new in this batch, as they are prepared
        for drv in drvs:
            start = time.perf_counter()
            try:
                top = str(reader.drv_path(drv))
                inputs = inputs_of(reader, [top])
                if (top not in modulo and top not in self._absent) or any(p not in modulo for p in inputs):
                    results.append((None, 0.0))
                    continue
                known = {p: modulo[p] for p in (top, *inputs) if p in modulo}
                prepared = prepare_build(reader, top, [] if top in modulo else [top], known)
            except (BuildrefError, OSError, RecursionError) as e:
                results.append((e, 0.0))
                continue
            modulo.update((d.path, d.modulo) for d in prepared.new)
            results.append((prepared, time.perf_counter() - start))
        return results

    async def prefetch(self, reader: DrvReader, drvs: list[str]) -> None:
        """Ask for the batch's derivations and their inputs at once (what cannot be read here is
        reported when its event is indexed)."""
        await self.of(await asyncio.to_thread(_tops_and_inputs, reader, drvs))


def _tops_and_inputs(reader: DrvReader, drvs: list[str]) -> list[str]:
    found: list[str] = []
    for drv in drvs:
        try:
            top = str(reader.drv_path(drv))
            found += [top, *inputs_of(reader, [top])]
        except (BuildrefError, OSError, RecursionError):
            continue
    return found
