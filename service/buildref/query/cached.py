"""Which configured binary caches hold a build: every output present there, its narinfo naming
that path, signed by a key configured for that cache, and with the NAR hash the index knows when
it knows one (a fixed output's, a learnt content's). A cache that cannot answer now is said to be
unknown, never absent (:mod:`buildref.cache`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TypeVar

from buildref.cache import CacheClient, CachePresence, Presence
from buildref.errors import BuildrefError
from buildref.models import Build
from buildref.nix.hashes import Hash, HashAlgo
from buildref.store.api import Reader, Store

B = TypeVar("B", bound=Build)

PROBED_BUILDS = 1000  # builds of one answer whose outputs are looked for; the rest say "unknown"


class CacheView:
    def __init__(self, client: CacheClient | None) -> None:
        self._client = client

    @property
    def configured(self) -> bool:
        return self._client is not None

    def forget(self, paths: Sequence[str]) -> None:
        """What the caches were said to hold of ``paths`` is out of date (they were just copied)."""
        if self._client is not None:
            self._client.forget(paths)

    async def annotate(self, store: Store, builds: Sequence[B]) -> list[B]:
        """``builds`` with ``caches`` and ``cachesUnknown`` filled in. The index is read in a
        snapshot of its own, ended before the caches are asked: a slow cache holds no reader."""
        if self._client is None or not builds:
            return list(builds)
        head, tail = builds[:PROBED_BUILDS], builds[PROBED_BUILDS:]
        paths = sorted({p for b in head for p in b.outputs.values()})
        answers = await self._presence(store, paths)
        everyone = tuple(a.url for a in answers)
        return [*(_with(b, answers) for b in head),
                *(dataclasses.replace(b, caches=(), caches_unknown=everyone) for b in tail)]

    async def of_paths(self, store: Store, paths: Sequence[str]) -> Held:
        """(caches holding every one of ``paths``, caches that cannot say now)."""
        if self._client is None or not paths:
            return (), ()
        return _holding(await self._presence(store, paths), paths)

    async def _presence(self, store: Store, paths: Sequence[str]) -> Sequence[CachePresence]:
        assert self._client is not None  # the callers' first check
        async with store.reading() as reader:
            known = await known_hashes(reader, paths)
        return await self._client.presence([(p, known.get(p)) for p in paths])


async def known_hashes(reader: Reader, paths: Sequence[str]) -> dict[str, Hash]:
    """The NAR hashes the index knows of ``paths`` (learnt from the local store)."""
    found: dict[str, Hash] = {}
    for path, content in (await reader.builds.contents(paths)).items():
        if content.nar_hash:
            try:
                found[path] = Hash.parse(content.nar_hash, HashAlgo.SHA256)
            except BuildrefError:
                continue
    return found


Held = tuple[tuple[str, ...], tuple[str, ...]]  # (caches holding all, caches that cannot say)


def _holding(answers: Sequence[CachePresence], paths: Sequence[str]) -> Held:
    holding, unknown = [], []
    for answer in answers:
        states = {answer.state(p) for p in paths}
        if states == {Presence.PRESENT}:
            holding.append(answer.url)
        elif Presence.UNAVAILABLE in states and Presence.ABSENT not in states:
            unknown.append(answer.url)  # no output known absent, and one it could not say of
    return tuple(holding), tuple(unknown)


def _with(build: B, answers: Sequence[CachePresence]) -> B:
    paths = list(build.outputs.values())
    if not paths:  # nothing of it was found in the store when indexed: no cache can be said to hold it
        return dataclasses.replace(build, caches=(), caches_unknown=())
    holding, unknown = _holding(answers, paths)
    return dataclasses.replace(build, caches=holding, caches_unknown=unknown)
