"""The two questions buildref answers, as joins over the index: which builds came from a ref
(``lookup``), and which revision a store path — or a NAR hash — came from (``why``). Arrival order
does not matter: a ref recorded after the build finds it, and the other way round."""

from __future__ import annotations

import fnmatch
import os
import re
import time
from typing import Any

from buildref.db import Database
from buildref.errors import BadHash, BuildrefError, UnknownRevision
from buildref.nix.hashes import Hash, HashAlgo
from buildref.refs import RefRecorder, UnknownRepository

MAX_DISTANCE = 64  # steps up the closure graph a lookup follows
FALLBACK_DEPTH = 200  # first-parent ancestors a lookup tries when the tip has no build
_HEX_PREFIX = re.compile(r"[0-9a-f]{4,40}")


class Lookups:
    def __init__(self, db: Database, recorder: RefRecorder, store_dir: str) -> None:
        self._db = db
        self._recorder = recorder
        self._store_dir = store_dir

    async def _repo_id(self, spec: str) -> tuple[str, int]:
        """A recorded repository by the name it was recorded under, or as ``record`` names it."""
        repo_id = await self._db.repository_id(spec)
        if repo_id is not None:
            return spec, repo_id
        repo = self._recorder.repository(spec)
        repo_id = await self._db.repository_id(repo.name)
        if repo_id is None:
            raise UnknownRepository(f"repository '{repo.name}' has not been recorded yet (buildref record)")
        return repo.name, repo_id

    async def _resolve(self, repo_id: int, ref: str, at: float) -> tuple[str, str]:
        if ref.startswith("refs/") or ref == "HEAD":
            names = [ref]
        else:
            names = [f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/remotes/{ref}", ref]
        target = await self._db.ref_target(repo_id, names, at)
        if target is not None:
            return target
        if _HEX_PREFIX.fullmatch(ref.lower()):
            revs = await self._db.revs_with_prefix(repo_id, ref.lower())
            if len(revs) == 1:
                return ref, revs[0]
            if len(revs) > 1:
                raise UnknownRevision(f"'{ref}' is ambiguous: {len(revs)} recorded revisions start with it")
        raise UnknownRevision(f"no recorded ref or revision '{ref}' (buildref record records refs)")

    async def _builds(self, sources: list[tuple[str, str, str, str]], direct: bool,
                      name_glob: str | None) -> list[dict[str, Any]]:
        paths = sorted({path for _, _, _, path in sources})
        hashes = sorted({nar_hash for _, _, nar_hash, _ in sources})
        distance = await self._db.users(paths, hashes, 0 if direct else MAX_DISTANCE)
        builds = []
        for build in await self._db.builds_of(sorted(distance)):
            if name_glob is not None and not fnmatch.fnmatchcase(build["name"], name_glob):
                continue
            outputs = build["outputs"]
            builds.append({
                "drvPath": build["drvPath"], "name": build["name"], "outputs": outputs,
                "builtAt": build["builtAt"], "distance": distance[build["drvId"]],
                "valid": bool(outputs) and all(os.path.lexists(p) for p in outputs.values()),
            })
        builds.sort(key=lambda b: (b["distance"], -b["builtAt"]))
        return builds

    async def lookup(self, spec: str, ref: str, at: float | None = None, name_glob: str | None = None,
                     direct: bool = False) -> dict[str, Any]:
        name, repo_id = await self._repo_id(spec)
        ref_name, rev = await self._resolve(repo_id, ref, at if at is not None else time.time())
        sources = await self._db.revision_sources(repo_id, rev)
        builds = await self._builds(sources, direct, name_glob)
        fallback = None
        if not builds:
            try:
                ancestors = await self._recorder.first_parents(name, rev, FALLBACK_DEPTH)
            except BuildrefError:  # the repository is not at hand any more: no history to walk
                ancestors = []
            for behind, ancestor in enumerate(ancestors, start=1):
                found = await self._builds(await self._recorder.sources_of(name, ancestor), direct, name_glob)
                if found:
                    fallback, builds = {"rev": ancestor, "commitsBehind": behind}, found
                    break
        return {
            "repository": name,
            "ref": ref_name,
            "rev": rev,
            "sources": _source_list(sources),
            "builds": builds,
            "fallback": fallback,
        }

    async def repository_builds(self, spec: str, since: float, limit: int) -> list[dict[str, Any]]:
        """Builds that used a source of any recorded revision of a repository, newest first."""
        _, repo_id = await self._repo_id(spec)
        distance = await self._db.repository_users(repo_id, MAX_DISTANCE)
        builds = [b for b in await self._db.builds_of(sorted(distance)) if b["builtAt"] >= since]
        builds.sort(key=lambda b: -b["builtAt"])
        return [{"drvPath": b["drvPath"], "name": b["name"], "builtAt": b["builtAt"], "outputs": b["outputs"],
                 "distance": distance[b["drvId"]]} for b in builds[:limit]]

    async def why(self, what: str) -> dict[str, Any]:
        prefix = self._store_dir + "/"
        if what.startswith(prefix):
            path = prefix + what[len(prefix):].split("/", 1)[0]
            found = await self._db.built_output(path)
            if found is None:
                raise BuildrefError(f"'{path}' is not an output of a recorded build")
            drv_id, drv_path, output, built_at = found
            paths, hashes = await self._db.closure_inputs(drv_id)
            sources = await self._db.recorded_sources(paths, hashes)
            return {"path": path, "drvPath": drv_path, "output": output, "builtAt": built_at,
                    "sources": await self._with_refs(sources, built_at),
                    "lockedInputs": await self._db.locked_inputs_of(paths, hashes)}
        try:
            nar_hash = Hash.parse(what, HashAlgo.SHA256).sri
        except BadHash:
            raise BuildrefError(f"'{what}' is neither a store path in {self._store_dir} "
                                "nor a NAR hash") from None
        sources = await self._db.recorded_sources([], [nar_hash])
        rows = [(subdir, rule, h, path) for path, _, _, subdir, rule, _, h in sources]
        return {"narHash": nar_hash, "sources": await self._with_refs(sources, None),
                "builds": await self._builds(rows, False, None) if rows else []}

    async def _with_refs(self, sources: list[tuple[str, str, str, str, str, int, str]],
                         built_at: float | None) -> list[dict[str, Any]]:
        rules: dict[tuple[str, str, str, str, int, str], list[str]] = {}
        for path, repo, rev, subdir, rule, rev_id, nar_hash in sorted(sources):
            rules.setdefault((path, repo, rev, subdir, rev_id, nar_hash), []).append(rule)
        result = []
        for (path, repo, rev, subdir, rev_id, nar_hash), names in rules.items():
            then = await self._db.refs_at(rev_id, built_at) if built_at is not None else []
            now = await self._db.refs_at(rev_id, None)
            result.append({"storePath": path, "narHash": nar_hash, "repository": repo, "rev": rev,
                           "subdir": subdir or None, "rules": names, "refs": sorted({*then, *now}),
                           "refsAtBuild": then, "refsNow": now})
        return result


def _source_list(sources: list[tuple[str, str, str, str]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for subdir, _, nar_hash, path in sources:
        seen.setdefault(path, {"storePath": path, "narHash": nar_hash, "subdir": subdir or None})
    return list(seen.values())

