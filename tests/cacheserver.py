"""A real HTTP server on 127.0.0.1 for cache tests: serves binary cache directories under
``/<prefix>/``, counts requests and requests in flight, and misbehaves on demand (500, hang)."""

from __future__ import annotations

import asyncio
import contextlib
import lzma
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from aiohttp import web


@dataclass
class Root:
    """One cache on the server. ``mode``: ``serve``; ``fail-narinfo`` (500 for narinfos);
    ``fail-all`` (500 for everything); ``hang-narinfo`` (narinfos never answered until close)."""

    directory: Path
    mode: str = "serve"
    xz: bool = False  # narinfos sent xz-compressed with Content-Encoding: xz (Nix's narinfo-compression)


@dataclass
class CacheServer:
    roots: dict[str, Root]
    # In-flight counts are of narinfo requests only.
    # Concurrency probe: a narinfo request is held until this many narinfo requests are in flight
    # (or ``hold_fallback`` seconds pass, for the tail of a run that can no longer fill a batch).
    hold_until_in_flight: int | None = None
    hold_fallback: float = 0.5
    # When set, narinfo requests wait for it.
    release: asyncio.Event | None = None
    requests: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    in_flight_by_root: Counter[str] = field(default_factory=Counter)
    max_in_flight_by_root: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}/{prefix}"

    @property
    def narinfo_requests(self) -> int:
        return sum(n for path, n in self.requests.items() if path.endswith(".narinfo"))

    async def __aenter__(self) -> CacheServer:
        app = web.Application()
        app.router.add_get("/{prefix}/{name:.+}", self._handle)  # narinfos, nix-cache-info, nar/…
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._closing.set()
        if self.release is not None:
            self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def wait_for_requests(self, narinfos: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.narinfo_requests >= narinfos)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        prefix, name = request.match_info["prefix"], request.match_info["name"]
        root = self.roots.get(prefix)
        if root is None:
            return web.Response(status=404)
        narinfo = name.endswith(".narinfo")
        self.requests[f"{prefix}/{name}"] += 1
        if narinfo:
            self._enter(prefix, +1)
        async with self._changed:
            self._changed.notify_all()
        try:
            if narinfo:
                await self._hold()
            if root.mode == "fail-all" or (root.mode == "fail-narinfo" and narinfo):
                return web.Response(status=500, text="injected failure")
            if root.mode == "hang-narinfo" and narinfo:
                await self._closing.wait()
                return web.Response(status=503)
            path = root.directory / name
            if ".." in Path(name).parts or not path.is_file():
                return web.Response(status=404)
            body = path.read_bytes()
            if narinfo and root.xz:
                return web.Response(body=lzma.compress(body), headers={"Content-Encoding": "xz"})
            return web.Response(body=body)
        finally:
            if narinfo:
                self._enter(prefix, -1)
            async with self._changed:
                self._changed.notify_all()

    def _enter(self, prefix: str, step: int) -> None:
        self.in_flight += step
        self.in_flight_by_root[prefix] += step
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.max_in_flight_by_root[prefix] = max(self.max_in_flight_by_root[prefix],
                                                 self.in_flight_by_root[prefix])

    async def _hold(self) -> None:
        if self.release is not None:
            await self.release.wait()
        target = self.hold_until_in_flight
        if target is not None:
            try:
                async with asyncio.timeout(self.hold_fallback), self._changed:
                    await self._changed.wait_for(lambda: self.in_flight >= target or self._closing.is_set())
            except TimeoutError:
                pass


@contextlib.contextmanager
def served(roots: dict[str, Root]) -> Iterator[CacheServer]:
    """A :class:`CacheServer` on its own event loop in a thread, for a service in another process
    (and ``nix copy --from``) to use while the test goes on; stopped at the end."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="cacheserver", daemon=True)
    thread.start()

    async def start() -> CacheServer:
        return await CacheServer(roots).__aenter__()

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
