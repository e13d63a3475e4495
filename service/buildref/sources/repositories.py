"""Which repository a request names (a configured name, a path, a URL), and whether the caller may
have the service read it: the query socket is open to every local user, and the service can read
more than they can (see :mod:`buildref.sources.access`)."""

from __future__ import annotations

import hashlib
import os
import re

from buildref.config import Repository
from buildref.errors import Forbidden, UnknownRepository, quoted
from buildref.sources.access import Credentials, Denied, locate, not_yours, trusted


def is_url(spec: str) -> bool:
    return "://" in spec or bool(re.fullmatch(r"[\w.-]+@[\w.-]+:.+", spec))


class Repositories:
    def __init__(self, configured: tuple[Repository, ...], mirrors: str) -> None:
        self._configured = {r.name: r for r in configured}
        self._mirrors = mirrors

    @property
    def configured(self) -> tuple[Repository, ...]:
        return tuple(self._configured.values())

    def mirror_path(self, url: str) -> str:
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))[:40]
        return os.path.join(self._mirrors, f"{digest}-{base or 'repo'}.git")

    def recorded_by(self, repo: Repository, uid: int | None) -> str:
        """Who a repository is recorded for: ``config`` for a configured one, else the caller's uid."""
        if self._configured.get(repo.name) == repo:
            return "config"
        return str(uid if uid is not None else os.geteuid())

    def named(self, spec: str) -> Repository | None:
        """The configured repository ``spec`` names (its name, path or URL); touches no file."""
        configured = self._configured.get(spec)
        if configured is not None:
            return configured
        for repo in self._configured.values():
            same_path = spec.startswith("/") and os.path.abspath(spec) == os.path.abspath(repo.path)
            if spec == repo.url or same_path:
                return repo
        return None

    def index_name(self, spec: str) -> str:
        """The name ``record`` would give ``spec`` in the index; touches no file."""
        configured = self.named(spec)
        if configured is not None:
            return configured.name
        return os.path.abspath(spec) if spec.startswith("/") else spec

    def resolve(self, spec: str, uid: int | None = None) -> Repository:
        """The repository to record for ``spec``: a configured one, or the path of a repository
        (named by its absolute path), or a URL. ``uid``: who asks (None: the service itself). Only
        root can have an unconfigured URL mirrored; another user only a repository of theirs,
        checked as them."""
        configured = self.named(spec)
        if configured is not None:
            return configured
        if is_url(spec):
            if not trusted(uid):
                raise Forbidden(f"{quoted(spec)} is not configured: only root can have a URL mirrored")
            return Repository(spec, self.mirror_path(spec), spec)
        if not spec.startswith("/"):
            raise UnknownRepository(f"no repository {quoted(spec)}: give a configured name or an"
                                    " absolute path")
        name = os.path.abspath(spec)
        if trusted(uid):
            if not os.path.isdir(name):
                raise UnknownRepository(f"no repository {quoted(name)}: no such directory")
            return Repository(name, name)
        assert uid is not None
        try:
            locate(name, Credentials.of(uid))
        except Denied:
            raise not_yours(name) from None
        return Repository(name, name, owner=uid)  # checked again before every read (GitWork)
