"""Partial matches: a store copy that is *almost* a revision's tree — a subset of its files
(``filtered``: cleanSourceWith, sourceByRegex, fileset.toSource) or its files and more
(``superset``: a checkout copied whole, untracked or ignored files, submodules filled in).

Candidates are found through a sample of the copy's files (:data:`buildref.git.forms.SAMPLES`
distinctive ones, the same choice every time), then every file is compared: a partial match is
claimed only when it holds file by file, and never for content too small or too common to tell.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from buildref.git.forms import EMPTY_BLOB, distinctive_leaf
from buildref.git.history import History
from buildref.git.source import GitRepository
from buildref.git.tree_nar import TreeRule

Files = Mapping[str, tuple[bytes, bytes]]  # path -> (mode, blob id)
MIN_DISTINCTIVE = 2  # files that must agree, and be distinctive, before a revision is named
CANDIDATES = 20  # candidate commits verified file by file per repository


@dataclass(frozen=True, slots=True)
class Relation:
    """How a copy's files relate to a revision's (or one of its directories')."""

    exact: bool
    filtered: bool  # every file of the copy agrees; the revision has more
    agreeing: int
    total: int  # files of the revision's tree (or directory)
    extra: int  # files of the copy the revision does not have
    git: bool  # a .git directory among them


@dataclass(frozen=True, slots=True)
class PartialPlace:
    rev: str
    commit_time: int
    prefix: str  # the revision's directory the copy relates to ("": its root)
    rules: tuple[TreeRule, ...]
    relation: Relation


def _distinctive(path: str, blob: bytes) -> bool:
    name = path.rsplit("/", 1)[-1].encode(errors="surrogateescape")
    return blob != EMPTY_BLOB and distinctive_leaf(name, blob)


def relate(copy: Files, revision: Files, tracked: Callable[[bytes], bool] = lambda _: False
           ) -> Relation | None:
    """The relation, when it is one buildref names: the copy is the revision's files, a subset of
    them or a superset, and enough distinctive files agree to tell the revision from others. A
    superset's extra files must be ones the repository never tracked (``tracked``: a blob is in
    its object database) — untracked or ignored files, ``.git``, a submodule's —, else the copy
    came from another revision that has them."""
    agreeing = [p for p, v in copy.items() if revision.get(p) == v]
    if sum(_distinctive(p, copy[p][1]) for p in agreeing) < MIN_DISTINCTIVE:
        return None
    if len(agreeing) == len(copy):
        if len(copy) == len(revision):
            return Relation(True, False, len(agreeing), len(revision), 0, False)
        return Relation(False, True, len(agreeing), len(revision), 0, False)
    if len(agreeing) == len(revision):
        extra = [p for p in copy if p not in revision]
        if any(tracked(copy[p][1]) for p in extra if not p.startswith(".git/")):
            return None
        return Relation(False, False, len(agreeing), len(revision), len(extra),
                        any(p.startswith(".git/") for p in extra))
    return None


def prefixes(samples: Iterable[tuple[str, bytes]], files: Files) -> list[str]:
    """Directories of ``files`` where sampled files sit at their own relative paths, the most
    often first: where a copy of a directory (or of the root, "") can be compared."""
    by_blob: dict[bytes, list[str]] = {}
    for path, (_, blob) in files.items():
        by_blob.setdefault(blob, []).append(path)
    counts: dict[str, int] = {}
    for file, blob in samples:
        for path in by_blob.get(blob, ()):
            if path == file or path.endswith("/" + file):
                prefix = path[:len(path) - len(file)]
                counts[prefix] = counts.get(prefix, 0) + 1
    return sorted(counts, key=lambda p: (-counts[p], len(p), p))


def best_relation(repo: GitRepository, copy: Files, commit: bytes, prefix: str
                  ) -> tuple[tuple[TreeRule, ...], Relation] | None:
    """The relation of ``copy`` to the directory ``prefix`` of ``commit``, and the rules under
    which it holds (the same relation under both rules is one answer with both)."""
    import pygit2

    obj = repo.repo[pygit2.Oid(raw=commit)]
    tree, data = obj.tree_id.raw, repo.commit_data(obj)
    odb = repo.repo.odb

    def tracked(blob: bytes) -> bool:
        return pygit2.Oid(raw=blob) in odb

    found: dict[Relation, list[TreeRule]] = {}
    for rule in (TreeRule.EXPORT_IGNORE, TreeRule.RAW):
        files = repo.forms.files(tree, prefix.rstrip("/"), rule, data)
        relation = relate(copy, files, tracked) if files is not None else None
        if relation is not None and not relation.exact:
            found.setdefault(relation, []).append(rule)
    if not found:
        return None
    relation = max(found, key=lambda r: (r.agreeing, -r.extra))
    return tuple(found[relation]), relation


def find_partial(repo: GitRepository, history: History, copy: Files, samples: list[tuple[str, bytes]],
                 deadline: float, limit: int = 3) -> tuple[list[PartialPlace], bool]:
    """Commits the copy is a partial match of, best first (most files agreeing, then newest), and
    whether the whole history was looked at. Candidates are commits with a sampled file at its
    place (under a prefix seen in the newest commit), the most samples first."""
    import pygit2

    odb = repo.repo.odb
    present = [(f, b) for f, b in samples if pygit2.Oid(raw=b) in odb]
    if not present or not history.commits:
        return [], history.complete
    newest = repo.forms.files(history.commits[0][1], "", TreeRule.RAW) or {}
    places = prefixes(present, newest) or [""]
    git = repo.repo

    def at(root: bytes, path: str) -> bytes | None:
        try:  # libgit2 walks the path: no tree is parsed in Python
            return bytes(git[pygit2.Oid(raw=root)][path].id.raw)
        except (KeyError, ValueError):
            return None

    scored: list[tuple[int, int, bytes, bytes, str]] = []
    complete = history.complete
    for i, (commit, root, commit_time) in enumerate(history.commits):
        if i % 64 == 63 and time.monotonic() > deadline:
            complete = False
            break
        for prefix in places:
            hits = sum(at(root, prefix + f) == b for f, b in present)
            if hits:
                scored.append((hits, commit_time, commit, root, prefix))
    scored.sort(key=lambda s: (-s[0], -s[1]))
    results: list[PartialPlace] = []
    seen_trees: set[tuple[bytes, str]] = set()
    for _, commit_time, commit, root, prefix in scored:  # the likeliest first; the rest are not verified
        if len(seen_trees) >= CANDIDATES:
            break
        if time.monotonic() > deadline:
            complete = False
            break
        if (root, prefix) in seen_trees:
            continue
        seen_trees.add((root, prefix))
        found = best_relation(repo, copy, commit, prefix)
        if found is not None:
            results.append(PartialPlace(str(pygit2.Oid(raw=commit)), commit_time, prefix.rstrip("/"), *found))
    results.sort(key=lambda p: (-p.relation.agreeing, p.relation.extra, -p.commit_time))
    return results[:limit], complete
