"""Binary caches: which configured caches hold a store path, verified (narinfo and signature)."""

from buildref.cache.client import (
    CacheClient,
    CachePresence,
    PathPresence,
    Presence,
    ProbeSettings,
    Reason,
)
from buildref.config import CacheConfig

__all__ = [
    "CacheClient",
    "CacheConfig",
    "CachePresence",
    "PathPresence",
    "Presence",
    "ProbeSettings",
    "Reason",
]
