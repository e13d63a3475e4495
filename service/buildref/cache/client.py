"""Which configured binary caches hold a store path, verified: the narinfo must name the asked path,
carry the NAR hash buildref knows, and be signed by one of the cache's configured public keys.

Probes go straight to the caches (never through Nix, which remembers a missing narinfo for an hour),
concurrently within per-cache and overall limits, and answers are memoised for a bounded time in
bounded memory. A cache that fails (a status other than 404/403, a timeout, a connection error) is
left alone for a while and answers UNAVAILABLE meanwhile, never ABSENT.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import assert_never

from buildref.cache.memo import TtlLru
from buildref.cache.transport import Fetched, Outcome, Transport, cache_base
from buildref.config import CacheConfig
from buildref.errors import BadConfig, BadNarInfo, BadSigningKey
from buildref.nix.hashes import Hash
from buildref.nix.narinfo import CacheInfo, NarInfoFile, PublicKey, public_keys
from buildref.nix.storepath import DEFAULT_STORE_DIR, StorePath


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """Limits and memo lifetimes. Nix itself disables a failing cache for 60 s, and remembers
    positive narinfo lookups for 30 days and negative ones for an hour; buildref rechecks sooner
    because caches are garbage-collected and builds get uploaded."""

    timeout: float = 10.0          # seconds for one request, connecting included
    per_cache: int = 8             # requests in flight to one cache
    overall: int = 32              # requests in flight to all caches together
    positive_ttl: float = 3600.0   # a verified narinfo
    negative_ttl: float = 300.0    # no narinfo, or one that does not verify
    unavailable_ttl: float = 60.0  # a failing cache is not asked again before this
    cache_info_ttl: float = 3600.0  # nix-cache-info (StoreDir) is read again after this
    max_entries: int = 100_000     # memo entries over all caches
    max_body: int = 1 << 20        # a narinfo is a few hundred bytes; refuse anything huge


class Presence(Enum):
    PRESENT = "present"          # a verified narinfo for this exact path and NAR hash
    ABSENT = "absent"            # the cache holds no verified copy of it
    UNAVAILABLE = "unavailable"  # no answer now: the cache failed or cannot be used


class Reason(Enum):
    VERIFIED = "verified"                    # PRESENT
    NO_NARINFO = "no-narinfo"                # ABSENT: 404 or 403 (or no file under file://)
    OTHER_STORE_PATH = "other-store-path"    # ABSENT: the narinfo at this hash part names another path
    UNTRUSTED = "untrusted"                  # ABSENT: no Sig verifies with a configured key
    OTHER_NAR_HASH = "other-nar-hash"        # ABSENT: the cache's copy has different contents
    INCOMPARABLE_HASH = "incomparable-hash"  # UNAVAILABLE: NarHash and the known hash use other algorithms
    FETCH_FAILED = "fetch-failed"            # UNAVAILABLE: other status, timeout, connection error
    MALFORMED = "malformed"                  # UNAVAILABLE: a narinfo Nix would call corrupt
    CACHE_UNUSABLE = "cache-unusable"        # UNAVAILABLE: no keys, no nix-cache-info, another StoreDir


def _state_of(reason: Reason) -> Presence:
    match reason:
        case Reason.VERIFIED:
            return Presence.PRESENT
        case Reason.NO_NARINFO | Reason.OTHER_STORE_PATH | Reason.UNTRUSTED | Reason.OTHER_NAR_HASH:
            return Presence.ABSENT
        case (Reason.INCOMPARABLE_HASH | Reason.FETCH_FAILED | Reason.MALFORMED
              | Reason.CACHE_UNUSABLE):
            return Presence.UNAVAILABLE
        case _:
            assert_never(reason)


@dataclass(frozen=True, slots=True)
class PathPresence:
    """One cache's answer for one store path; ``detail`` says why, for people."""

    store_path: str
    state: Presence
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class CachePresence:
    """One cache's answers, in the order asked; ``error`` (an ``error: …`` line) when the cache as a
    whole could not answer: unusable, or failing and left alone for a while."""

    url: str
    paths: tuple[PathPresence, ...]
    error: str | None = None

    @property
    def holds_all(self) -> bool:
        return all(p.state is Presence.PRESENT for p in self.paths)

    def state(self, store_path: str) -> Presence:
        for p in self.paths:
            if p.store_path == store_path:
                return p.state
        raise KeyError(store_path)


@dataclass(frozen=True, slots=True)
class _Lookup:
    """What a cache says about a path, whatever hash the asker expects (so one memo entry serves
    every query for that path)."""

    reason: Reason
    detail: str
    nar_hash: Hash | None = None


class _Cache:
    """Mutable per-cache state; only the client's coroutines touch it, all on one event loop."""

    def __init__(self, index: int, config: CacheConfig, per_cache: int) -> None:
        self.index = index  # memo key: two entries for one URL may trust different keys
        self.config = config
        self.base = cache_base(config.url)
        try:
            self.keys: dict[str, PublicKey] = public_keys(config.public_keys)
        except BadSigningKey as e:
            raise BadConfig(f"binary cache '{config.url}': {e.args[0]}") from None
        self.slots = asyncio.Semaphore(per_cache)
        self.info_lock = asyncio.Lock()
        self.info_until = float("-inf")
        self.info_error: str | None = None
        self.disabled_until = float("-inf")
        self.disabled_why = ""


class CacheClient:
    """``async with CacheClient(caches) as client: await client.presence([(path, nar_hash), …])``.

    A cache with no ``public_keys`` answers UNAVAILABLE for every path without being asked: a
    narinfo counts only with a valid signature (Nix's ``require-sigs``, which buildref does not let
    anyone turn off), so no answer from it could be PRESENT, and ABSENT would claim more than is
    known. Unlike Nix, an unsigned content-addressed path does not count either.
    """

    def __init__(self, caches: Sequence[CacheConfig], store_dir: str = DEFAULT_STORE_DIR,
                 settings: ProbeSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings or ProbeSettings()
        self._store_dir = store_dir.rstrip("/")
        self._clock = clock
        self._caches = [_Cache(i, config, self._settings.per_cache) for i, config in enumerate(caches)]
        self._overall = asyncio.Semaphore(self._settings.overall)
        self._memo: TtlLru[tuple[int, str], _Lookup] = TtlLru(self._settings.max_entries, clock)
        self._inflight: dict[tuple[int, str], asyncio.Task[_Lookup]] = {}
        self._transport = Transport(self._settings.timeout, self._settings.max_body)
        self._stats: dict[str, int] = {}

    async def __aenter__(self) -> CacheClient:
        await self._transport.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._transport.close()

    def forget(self, paths: Iterable[str]) -> None:
        """Ask the caches afresh about ``paths`` (copied to one just now): a memoised "absent"
        must not outlive the upload."""
        for path in paths:
            for cache in self._caches:
                self._memo.forget((cache.index, path))

    @property
    def stats(self) -> dict[str, int]:
        """Probes made since start, by result (a memo hit is not a probe)."""
        return dict(self._stats)

    async def presence(self, queries: Iterable[tuple[str, Hash | None]]) -> tuple[CachePresence, ...]:
        """For every configured cache, in configuration order, the state of every asked path. A
        known NAR hash must match the cache's; None accepts whatever verified copy the cache has."""
        asked = list(queries)
        for path, _ in asked:
            StorePath.parse(path, self._store_dir)
        return tuple(await asyncio.gather(*(self._ask(cache, asked) for cache in self._caches)))

    async def _ask(self, cache: _Cache, asked: list[tuple[str, Hash | None]]) -> CachePresence:
        unusable = await self._check(cache)
        if unusable is not None:
            reason, error = unusable
            return CachePresence(
                cache.config.url,
                tuple(PathPresence(path, Presence.UNAVAILABLE, reason, error) for path, _ in asked),
                error,
            )
        lookups: dict[str, _Lookup] = {}
        for path, _ in asked:
            memoised = self._memo.get((cache.index, path))
            if memoised is not None:
                lookups[path] = memoised
        missing = list(dict.fromkeys(path for path, _ in asked if path not in lookups))
        lookups.update(zip(missing, await asyncio.gather(*(self._lookup(cache, p) for p in missing)),
                           strict=True))
        answers = tuple(_answer(path, expected, lookups[path]) for path, expected in asked)
        failed = any(lookup.reason is Reason.FETCH_FAILED for lookup in lookups.values())
        return CachePresence(cache.config.url, answers, cache.disabled_why if failed else None)

    async def _check(self, cache: _Cache) -> tuple[Reason, str] | None:
        """Why the cache cannot answer now, or None: keys configured, not disabled, and a
        ``nix-cache-info`` for our store directory (read once per ``cache_info_ttl``)."""
        url = cache.config.url
        if not cache.keys:
            return (Reason.CACHE_UNUSABLE,
                    f"error: binary cache '{url}' has no public_keys, so nothing in it can be verified")
        async with cache.info_lock:
            if self._clock() < cache.disabled_until:
                return Reason.FETCH_FAILED, cache.disabled_why
            if self._clock() < cache.info_until:
                return None if cache.info_error is None else (Reason.CACHE_UNUSABLE, cache.info_error)
            async with cache.slots, self._overall:
                fetched = await self._transport.get(cache.base, "nix-cache-info")
            error: str | None = None
            ttl = self._settings.cache_info_ttl
            match fetched.outcome:
                case Outcome.FAILED:
                    self._disable(cache, fetched)
                    return Reason.FETCH_FAILED, cache.disabled_why
                case Outcome.MISSING:
                    # Nix would try to create it and, over HTTP, fail: "does not appear to be a
                    # binary cache".
                    error = f"error: '{url}' does not appear to be a binary cache (no nix-cache-info)"
                    ttl = self._settings.negative_ttl
                case Outcome.FOUND:
                    try:
                        info = CacheInfo.parse(fetched.body, fetched.url)
                    except BadNarInfo as e:
                        error = str(e)
                        ttl = self._settings.unavailable_ttl
                    else:
                        if info.store_dir is not None and info.store_dir != self._store_dir:
                            error = (f"error: binary cache '{url}' is for Nix stores with prefix "
                                     f"'{info.store_dir}', not '{self._store_dir}'")
                case _:
                    assert_never(fetched.outcome)
            cache.info_until = self._clock() + ttl
            cache.info_error = error
            return None if error is None else (Reason.CACHE_UNUSABLE, error)

    async def _lookup(self, cache: _Cache, path: str) -> _Lookup:
        key = (cache.index, path)
        memoised = self._memo.get(key)
        if memoised is not None:
            return memoised
        # One request per cache and path however many callers ask at once.
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._probe(cache, path))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: tuple[int, str], task: asyncio.Task[_Lookup]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _probe(self, cache: _Cache, path: str) -> _Lookup:
        hash_part = StorePath.parse(path, self._store_dir).hash_part
        async with cache.slots, self._overall:
            # Checked once a slot is free: a failure while this probe waited disables the cache.
            if self._clock() < cache.disabled_until:
                return _Lookup(Reason.FETCH_FAILED, cache.disabled_why)
            fetched = await self._transport.get(cache.base, f"{hash_part}.narinfo")
        lookup, ttl = self._judge(cache, path, fetched)
        self._stats[lookup.reason.value] = self._stats.get(lookup.reason.value, 0) + 1
        if ttl > 0:
            self._memo.put((cache.index, path), lookup, ttl)
        return lookup

    def _judge(self, cache: _Cache, path: str, fetched: Fetched) -> tuple[_Lookup, float]:
        """The lookup a read amounts to, and how long to remember it (0: not per path)."""
        settings = self._settings
        match fetched.outcome:
            case Outcome.MISSING:
                return _Lookup(Reason.NO_NARINFO, f"no narinfo ({fetched.detail})"), settings.negative_ttl
            case Outcome.FAILED:
                # The cache is left alone for a while; the failure is not remembered per path.
                self._disable(cache, fetched)
                return _Lookup(Reason.FETCH_FAILED, f"{fetched.url}: {fetched.detail}"), 0.0
            case Outcome.FOUND:
                pass
            case _:
                assert_never(fetched.outcome)
        try:
            info = NarInfoFile.parse(fetched.body, self._store_dir, fetched.url)
        except BadNarInfo as e:
            return _Lookup(Reason.MALFORMED, e.args[0]), settings.unavailable_ttl
        if info.store_path != path:
            return (_Lookup(Reason.OTHER_STORE_PATH, f"{fetched.url} is for {info.store_path}"),
                    settings.negative_ttl)
        signer = info.signed_by(cache.keys)
        if signer is None:
            names = sorted({sig.split(":", 1)[0] for sig in info.sigs})
            return (_Lookup(Reason.UNTRUSTED,
                            f"{fetched.url} has no Sig by a configured key (signed by: "
                            f"{', '.join(names) or 'nobody'})"),
                    settings.negative_ttl)
        return _Lookup(Reason.VERIFIED, f"signed by {signer}", info.nar_hash), settings.positive_ttl

    def _disable(self, cache: _Cache, fetched: Fetched) -> None:
        now = self._clock()
        if now < cache.disabled_until:
            return  # keep the first failure as the reason, as Nix does
        ttl = self._settings.unavailable_ttl
        cache.disabled_until = now + ttl
        cache.disabled_why = (f"error: binary cache '{cache.config.url}' is not asked for {ttl:g} s "
                              f"after {fetched.url}: {fetched.detail}")


def _answer(path: str, expected: Hash | None, lookup: _Lookup) -> PathPresence:
    if lookup.reason is Reason.VERIFIED and expected is not None and lookup.nar_hash != expected:
        assert lookup.nar_hash is not None
        if lookup.nar_hash.algo is not expected.algo:
            return PathPresence(path, Presence.UNAVAILABLE, Reason.INCOMPARABLE_HASH,
                                f"the cache's NarHash uses {lookup.nar_hash.algo.value}, "
                                f"the known hash {expected.algo.value}")
        return PathPresence(path, Presence.ABSENT, Reason.OTHER_NAR_HASH,
                            f"the cache's copy has NarHash {lookup.nar_hash}, not {expected}")
    return PathPresence(path, _state_of(lookup.reason), lookup.reason, lookup.detail)
