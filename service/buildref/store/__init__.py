"""The index: the backend named by the config's ``database`` URL, behind ``store.api``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from buildref.errors import BadConfig
from buildref.store.api import Store


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///path`` URL."""
    path = url.removeprefix("sqlite://")
    if not path.startswith("/"):
        raise BadConfig(f"database '{url}': give an absolute path, sqlite:///path")
    return path


def check_url(url: str) -> None:
    """Refuse, at start, a database URL no backend serves."""
    if url.startswith("sqlite://"):
        sqlite_path(url)
        return
    raise BadConfig(f"database '{url}': only sqlite:///path databases are supported")


@contextlib.asynccontextmanager
async def open_store(url: str) -> AsyncIterator[Store]:
    """The store at ``url``, closed when the block ends."""
    from buildref.store.sqlite import SqliteStore

    check_url(url)
    store = await SqliteStore.open(sqlite_path(url))
    try:
        yield store
    finally:
        await store.close()
