"""Binary caches: which configured caches hold a store path, verified (narinfo and signature)."""

from buildref.cache.client import (
    CacheClient,
    CacheConfig,
    CachePresence,
    PathPresence,
    Presence,
    ProbeSettings,
    Reason,
)

__all__ = [
    "CacheClient",
    "CacheConfig",
    "CachePresence",
    "PathPresence",
    "Presence",
    "ProbeSettings",
    "Reason",
]
