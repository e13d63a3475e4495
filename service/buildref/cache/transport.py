"""The one place buildref reads from binary caches: HTTP(S) through one aiohttp session, ``file://``
through plain reads in a thread. Answers are found / missing / failed, as Nix sorts them: 404 and 403
mean missing; any other status, a timeout or a connection error means the read failed."""

from __future__ import annotations

import asyncio
import bz2
import errno
import lzma
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote

import aiohttp

from buildref.errors import BadConfig

# Status codes Nix's HTTP binary cache store turns into "no such file" (S3 answers 403 for a
# missing key in an unlistable bucket).
_MISSING_STATUS = frozenset({403, 404})
_SCHEMES = ("http://", "https://", "file://")


class Outcome(Enum):
    FOUND = "found"
    MISSING = "missing"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Fetched:
    """One read: the body when found, and for people what happened (``HTTP 500``, a timeout ...)."""

    url: str
    outcome: Outcome
    body: bytes = b""
    detail: str = ""


def cache_base(url: str) -> str:
    """The base URL files are read under: Nix store parameters (``?priority=…``) and a trailing
    slash are dropped, as Nix does when it opens the store."""
    if not url.startswith(_SCHEMES):
        raise BadConfig(f"binary cache URL '{url}' is not http://, https:// or file://")
    base = url.split("?", 1)[0].rstrip("/")
    if base.startswith("file://") and not base.removeprefix("file://").startswith("/"):
        raise BadConfig(f"binary cache URL '{url}' does not name an absolute directory")
    return base


class Transport:
    """Owns the aiohttp session: open with ``async with Transport(...)``; ``get`` reads one file."""

    def __init__(self, timeout: float, max_body: int) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_seconds = timeout
        self._max_body = max_body
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        # No connection limit here: the caller's semaphores bound concurrency per cache and overall.
        connector = aiohttp.TCPConnector(limit=0)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, raise_for_status=False
        )
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, base: str, name: str) -> Fetched:
        """Read ``<base>/<name>``; ``base`` comes from :func:`cache_base`."""
        url = f"{base}/{name}"
        if base.startswith("file://"):
            return await asyncio.to_thread(self._read_file, url)
        return await self._get_http(url)

    def _read_file(self, url: str) -> Fetched:
        path = Path(unquote(url.removeprefix("file://")))
        try:
            with path.open("rb") as f:
                body = f.read(self._max_body + 1)
        except OSError as e:
            # Nix's local binary cache store: a file that does not exist is "no such file";
            # anything else (permissions, I/O) is an error.
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return Fetched(url, Outcome.MISSING, detail="no such file")
            return Fetched(url, Outcome.FAILED, detail=f"cannot read {path}: {e.strerror}")
        return self._found(url, body, None)

    async def _get_http(self, url: str) -> Fetched:
        if self._session is None:
            raise RuntimeError("Transport used outside 'async with'")
        try:
            async with self._session.get(url) as response:
                if response.status in _MISSING_STATUS:
                    return Fetched(url, Outcome.MISSING, detail=f"HTTP {response.status}")
                if response.status != 200:
                    return Fetched(url, Outcome.FAILED, detail=f"HTTP {response.status}")
                body = await response.content.read(self._max_body + 1)
                encoding = response.headers.get("Content-Encoding")
        except TimeoutError:
            return Fetched(url, Outcome.FAILED, detail=f"timed out after {self._timeout_seconds:g} s")
        except aiohttp.ClientError as e:
            return Fetched(url, Outcome.FAILED, detail=f"{type(e).__name__}: {e}")
        return self._found(url, body, encoding)

    def _found(self, url: str, body: bytes, encoding: str | None) -> Fetched:
        if len(body) > self._max_body:
            return Fetched(url, Outcome.FAILED, detail=f"larger than {self._max_body} bytes")
        try:
            body = _decompress(body, encoding, self._max_body)
        except (lzma.LZMAError, OSError, ValueError, EOFError) as e:
            return Fetched(url, Outcome.FAILED, detail=f"cannot decode Content-Encoding {encoding}: {e}")
        return Fetched(url, Outcome.FOUND, body)


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo the encodings Nix may put on a narinfo (``nix copy --to s3://…?narinfo-compression=xz``)
    that aiohttp leaves alone; gzip, deflate and br are already undone by aiohttp."""
    match (encoding or "").lower():
        case "xz":
            decompressor: lzma.LZMADecompressor | bz2.BZ2Decompressor = lzma.LZMADecompressor()
        case "bzip2":
            decompressor = bz2.BZ2Decompressor()
        case "" | "identity" | "gzip" | "x-gzip" | "deflate" | "br" | "zstd":
            return body
        case other:
            raise ValueError(f"unknown encoding '{other}'")
    out = decompressor.decompress(body, max_length=limit + 1)
    if len(out) > limit:
        raise ValueError(f"decodes to more than {limit} bytes")
    if not decompressor.eof:
        raise EOFError("truncated")
    return out
