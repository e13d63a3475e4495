"""Which repository a request names (a configured name, a path, a URL), and whether the caller may
have the service read it: the query socket is open to every local user, and the service can read
more than they can."""

from __future__ import annotations

import hashlib
import os
import re

from buildref.config import Repository
from buildref.errors import Forbidden, UnknownRepository


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

    def resolve(self, spec: str, uid: int | None = None) -> Repository:
        """A configured name, or the path of a repository (named by its absolute path), or a URL.
        With ``uid`` (who asks), an unconfigured path must belong to that user, or the user be
        root; only root can have an unconfigured URL mirrored."""
        configured = self._configured.get(spec)
        if configured is not None:
            return configured
        for repo in self._configured.values():
            if os.path.abspath(spec) == os.path.abspath(repo.path):
                return repo
        if is_url(spec):
            for repo in self._configured.values():
                if repo.url == spec:
                    return repo
            if uid not in (None, 0):
                raise Forbidden(f"'{spec}' is not configured: only root can have a URL mirrored")
            return Repository(spec, self.mirror_path(spec), spec)
        if spec.startswith("/") and os.path.isdir(spec):
            path = os.path.abspath(spec)
            if uid not in (None, 0) and os.stat(path).st_uid != uid:
                raise Forbidden(f"'{path}' is not configured and not yours: only its owner or root "
                                "can have it recorded")
            return Repository(path, path)
        raise UnknownRepository(f"no repository '{spec}': give a configured name or an absolute path")
