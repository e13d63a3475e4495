"""The index: the backend named by the config's ``database`` URL, behind ``store.api``.

``sqlite:///path`` is one file on this machine. A libpq URL (``postgresql://...``) is a fleet's
shared index: the service keeps its inbox in local SQLite (the hook's ack waits on that file only)
and ships builds to PostgreSQL in the background (``store.fleet``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from buildref.errors import BadConfig
from buildref.store.api import Store

_POSTGRES = ("postgresql://", "postgres://")


def is_postgres(url: str) -> bool:
    return url.startswith(_POSTGRES)


def redacted(url: str) -> str:
    """``url`` for people and logs: without a password (in its user part or a ``password=``
    parameter). Anything that does not parse is shown as its scheme alone."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.partition(":")[0] + "://…"
    user, at, hosts = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}@{hosts}" if at else hosts
    query = "&".join(p for p in parts.query.split("&") if p.partition("=")[0].lower() != "password")
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///path`` URL."""
    path = url.removeprefix("sqlite://")
    if not path.startswith("/"):
        raise BadConfig(f"database '{url}': give an absolute path, sqlite:///path")
    return path


def check_url(url: str) -> None:
    """Refuse, at start, a database URL no backend serves (naming it without its password)."""
    if url.startswith("sqlite://"):
        sqlite_path(url)
        return
    if is_postgres(url):
        try:
            parts = urlsplit(url)
        except ValueError as e:
            raise BadConfig(f"database '{redacted(url)}': not a libpq URL ({e})") from None
        if parts.fragment:
            raise BadConfig(f"database '{redacted(url)}': a libpq URL has no #fragment")
        return
    raise BadConfig(f"database '{redacted(url)}': expected sqlite:///path or postgresql://…")


@contextlib.asynccontextmanager
async def open_store(url: str, inbox: str, builder: str) -> AsyncIterator[Store]:
    """The store at ``url``, closed when the block ends. With PostgreSQL, ``inbox`` is the local
    SQLite file that holds the events (created if new), and ``builder`` the name whose queued
    store paths this service learns; PostgreSQL itself is reached when first needed, so the
    service starts and acknowledges builds while it is away."""
    check_url(url)
    store: Store
    if is_postgres(url):
        from buildref.store.fleet import FleetStore

        store = await FleetStore.open(url, inbox, builder)
    else:
        from buildref.store.sqlite import SqliteStore

        store = await SqliteStore.open(sqlite_path(url))
    try:
        yield store
    finally:
        await store.close()
