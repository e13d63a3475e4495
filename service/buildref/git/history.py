"""Revisions by content, in a repository's history: which commits have a given form (a tree Nix
copied) at their root or in a directory — whether or not they were ever a ref's tip — and refs
resolved by git's own rules. Bounded: every walk stops at a deadline and says so."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from buildref.errors import UnknownRevision, quoted
from buildref.git.source import GitRepository
from buildref.git.tree_nar import TreeRule

# git's order for a short name: a tag wins over a branch of the same name (git rev-parse, Nix's ?ref=)
_DWIM = ("{}", "refs/{}", "refs/tags/{}", "refs/heads/{}", "refs/remotes/{}", "refs/remotes/{}/HEAD")
_ABSENT = object()


def _oid(raw: bytes) -> Any:
    import pygit2

    return pygit2.Oid(raw=raw)


@dataclass(frozen=True, slots=True)
class Resolved:
    commit: Any  # pygit2.Commit
    ref: str | None  # the full ref name REF resolved through, when it named one

    @property
    def rev(self) -> str:
        return str(self.commit.id)


@dataclass(frozen=True, slots=True)
class Place:
    """Where a form is: a commit, and the directory (``""``: its root) under a rule."""

    rev: str
    commit_time: int
    subdir: str
    rules: tuple[TreeRule, ...]  # the rules under which it has the form


@dataclass
class Search:
    """A bounded search's outcome: the places found, newest first, and whether all the history
    was searched (``complete``) or a deadline cut it short."""

    places: list[Place] = field(default_factory=list)
    complete: bool = True


def resolve(repo: GitRepository, spec: str) -> Resolved:
    """``spec`` as git resolves it: a ref (a short name in git's order), a full or short hash, any
    revision expression (``main~3``, ``v1^{}``); annotated tags are peeled to their commit."""
    import pygit2

    git = repo.repo
    if "\0" not in spec and ".." not in spec:
        for pattern in _DWIM:
            name = pattern.format(spec)
            if not (name.startswith("refs/") or name == "HEAD"):
                continue
            try:
                ref = git.references.get(name)
            except (ValueError, KeyError, pygit2.GitError):
                ref = None
            if ref is None:
                continue
            try:
                commit = ref.peel(pygit2.Commit)
            except (ValueError, KeyError, pygit2.GitError, pygit2.InvalidSpecError):
                raise UnknownRevision(f"{quoted(spec)} does not name a commit in '{repo.path}'") from None
            return Resolved(commit, name)
    return Resolved(repo.resolve(spec), None)


class History:
    """Every commit reachable from the repository's refs, newest first, with its root tree; walked
    again only when the refs' targets change (one object serves many queries)."""

    def __init__(self, repo: GitRepository) -> None:
        self._repo = repo
        self._tips: frozenset[bytes] = frozenset()
        self.commits: list[tuple[bytes, bytes, int]] = []  # (commit id, root tree id, commit time)
        self.complete = False

    def refresh(self, deadline: float) -> History:
        import pygit2

        git = self._repo.repo
        tips = set()
        for name in git.references:
            try:
                tips.add(git.references[name].peel(pygit2.Commit).id.raw)
            except (ValueError, KeyError, pygit2.GitError, pygit2.InvalidSpecError):
                continue  # a ref to a tree or blob, or a broken one: no history there
        if frozenset(tips) == self._tips and self.complete:
            return self
        walker = git.walk(None, pygit2.enums.SortMode.TIME)
        for tip in tips:
            walker.push(pygit2.Oid(raw=tip))
        commits = []
        complete = True
        for i, commit in enumerate(walker):
            commits.append((commit.id.raw, commit.tree_id.raw, int(commit.commit_time)))
            if i % 512 == 511 and time.monotonic() > deadline:
                complete = False
                break
        self.commits, self._tips, self.complete = commits, frozenset(tips), complete
        return self


def filters_trees(repo: GitRepository, history: History) -> bool:
    """Whether Nix's copy of the newest commit is not its git tree (export-ignore, submodules):
    only then can a form that is no git object be one of this repository's roots."""
    if not history.commits:
        return False
    commit, root, _ = history.commits[0]
    data = repo.commit_data(repo.repo[_oid(commit)])
    return any(repo.forms.form(root, rule, commit=data).oid != root for rule in TreeRule)


def find(repo: GitRepository, history: History, form: bytes, raw: bytes | None, deadline: float,
         limit: int = 5, roots_only: bool = False) -> Search:
    """The newest commits (at most ``limit``) that have ``form`` at their root or (unless
    ``roots_only``) in a directory, under either rule. ``raw``: the git tree the form was made
    from, when known (an export-ignore form, or one with submodules, is not a git object itself)."""
    import pygit2

    target = raw if raw is not None else form
    search = Search(complete=history.complete)
    if pygit2.Oid(raw=target) not in repo.repo.odb:
        if not filters_trees(repo, history):
            return search  # not a tree of this repository
        return _roots_by_form(repo, history, form, deadline, limit, search)
    # roots first, all of them: a fetched revision (fetchGit, a flake's self) is a whole tree
    for commit, root, commit_time in history.commits:
        if root == target and (place := _verify(repo, commit, commit_time, "", form)) is not None:
            search.places.append(place)
            if len(search.places) >= limit:
                return search
    if search.places or roots_only:
        return search
    return _subtrees(repo, history, form, target, deadline, limit, search)


def _verify(repo: GitRepository, commit: bytes, commit_time: int, subdir: str, form: bytes) -> Place | None:
    """``commit`` as a place of ``form``: the rule under which its directory ``subdir`` has it."""
    import pygit2

    oid = pygit2.Oid(raw=commit)
    obj = repo.repo[oid]
    tree, data = obj.tree_id.raw, repo.commit_data(obj)
    rules = tuple(rule for rule in (TreeRule.EXPORT_IGNORE, TreeRule.RAW)
                  if (found := repo.forms.at(tree, subdir, rule, data)) is not None and found.oid == form)
    return Place(str(oid), commit_time, subdir, rules) if rules else None


def _subtrees(repo: GitRepository, history: History, form: bytes, target: bytes, deadline: float,
              limit: int, search: Search) -> Search:
    """Commits with the git tree ``target`` in a directory. Where it is below each tree is
    memoised, so every distinct tree of the history is read at most once."""
    below: dict[bytes, str | None] = {target: ""}  # tree -> path of target below it; None: absent

    def path_below(tree: bytes) -> str | None:
        stack: list[list[Any]] = [[tree, [e for e in repo.trees.entries(tree) if e.is_tree], 0]]
        while stack:
            frame = stack[-1]
            current, subtrees, index = frame
            if index == len(subtrees):
                below[current] = None
                stack.pop()
                continue
            entry = subtrees[index]
            known = below.get(entry.oid, _ABSENT)
            if known is _ABSENT:
                stack.append([entry.oid, [e for e in repo.trees.entries(entry.oid) if e.is_tree], 0])
            elif known is None:
                frame[2] += 1
            else:
                name = entry.name.decode(errors="surrogateescape")
                below[current] = f"{name}/{known}" if known else name
                stack.pop()
        return below[tree]

    for i, (commit, root, commit_time) in enumerate(history.commits):
        if i % 64 == 63 and time.monotonic() > deadline:
            search.complete = False
            break
        path = below[root] if root in below else path_below(root)
        if not path:  # absent, or the root itself (already looked for)
            continue
        place = _verify(repo, commit, commit_time, path, form)
        if place is not None:
            search.places.append(place)
            if len(search.places) >= limit:
                break
    return search


def _roots_by_form(repo: GitRepository, history: History, form: bytes, deadline: float, limit: int,
                   search: Search) -> Search:
    """A form that is no git object (a root with export-ignore applied, or with submodules):
    compared with each commit's root form, memoised by tree, until the deadline."""
    import pygit2

    for i, (commit, root, commit_time) in enumerate(history.commits):
        if i % 16 == 15 and time.monotonic() > deadline:
            search.complete = False
            break
        data = repo.commit_data(repo.repo[_oid(commit)])
        rules = tuple(rule for rule in (TreeRule.EXPORT_IGNORE, TreeRule.RAW)
                      if (found := repo.forms.form(root, rule, commit=data)).oid == form and found.known)
        if rules:
            search.places.append(Place(str(pygit2.Oid(raw=commit)), commit_time, "", rules))
        if len(search.places) >= limit:
            break
    return search
