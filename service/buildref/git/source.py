"""A commit (or a directory in it) as the Nix source it becomes: rev, narHash, store path,
lastModified and revCount, as ``builtins.fetchGit`` reports them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from buildref.errors import GitError, UnknownRevision
from buildref.git.attributes import Rule, export_ignored
from buildref.git.forms import TreeForms
from buildref.git.tree_nar import Fragment, TreeNarCache, TreeRule
from buildref.nix.hashes import Hash
from buildref.nix.nar import NarDigest
from buildref.nix.storepath import DEFAULT_STORE_DIR, check_name, source_path


@dataclass(frozen=True, slots=True)
class SourceInfo:
    rev: str
    nar_hash: Hash
    nar_size: int
    store_path: str
    last_modified: int
    rev_count: int
    rule: TreeRule
    subdir: str | None


def _split_subdir(subdir: str) -> list[str]:
    parts = [p for p in subdir.strip("/").split("/") if p not in ("", ".")]
    if not parts:
        raise GitError(f"subdirectory '{subdir}' names the repository root; leave --subdir out")
    if ".." in parts:
        raise GitError(f"subdirectory '{subdir}' leaves the repository")
    return parts


_configured: list[bool] = []


def _configure_libgit2() -> None:
    """Read repositories the same way whoever runs buildref and whatever the machine's git setup.

    Only objects are read: libgit2 runs no hooks, filters or fsmonitor here, so the ownership check
    (which keeps root, the service's user, out of a developer's repository) guards nothing; and no
    global or system git config is consulted (the result depends on the commit alone, and a service
    user's home may be unreadable)."""
    if _configured:
        return
    import pygit2
    from pygit2.enums import ConfigLevel, Option

    pygit2.option(Option.SET_OWNER_VALIDATION, 0)
    # libgit2 keeps up to 256 MiB of objects per process by default: the service opens many
    # repositories and walks long histories, so bound it
    pygit2.option(Option.SET_CACHE_MAX_SIZE, 64 << 20)
    for level in (ConfigLevel.SYSTEM, ConfigLevel.XDG, ConfigLevel.GLOBAL):
        pygit2.settings.search_path[level] = ""
    _configured.append(True)


class GitRepository:
    """One repository, opened once, with its tree memo."""

    def __init__(self, path: str, store_dir: str = DEFAULT_STORE_DIR) -> None:
        import pygit2

        _configure_libgit2()
        self._pygit2 = pygit2
        try:
            self.repo: Any = pygit2.Repository(path)
        except (pygit2.GitError, KeyError, OSError) as e:
            raise GitError(f"'{path}' is not a git repository: {e}") from None
        self.path = path
        self.store_dir = store_dir
        self.trees = TreeNarCache(self.repo)
        self.forms = TreeForms(self.trees)

    def resolve(self, rev: str) -> Any:
        """The commit a revision (hash, branch, tag, ``HEAD``, ``main~2``...) names."""
        pygit2 = self._pygit2
        try:
            obj = self.repo.revparse_single(rev)
            return obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            raise UnknownRevision(f"unknown revision '{rev}' in repository '{self.path}'") from None

    def rev_count(self, commit: Any) -> int:
        """Commits reachable from ``commit``, itself included (``git rev-list --count``)."""
        return sum(1 for _ in self.repo.walk(commit.id))

    def source(self, rev: str = "HEAD", subdir: str | None = None,
               rule: TreeRule = TreeRule.EXPORT_IGNORE) -> SourceInfo:
        commit = self.resolve(rev)
        name = "source"
        if subdir is None:
            fragment = self.trees.fragment(commit.tree_id.raw, rule)
        else:
            parts = _split_subdir(subdir)
            name = check_name(parts[-1])
            fragment = self._subdir_fragment(commit.tree_id.raw, parts, rule, subdir)
        info = self.trees.nar_digest(fragment)
        return SourceInfo(
            rev=str(commit.id),
            nar_hash=info.nar_hash,
            nar_size=info.nar_size,
            store_path=source_path(info.nar_hash, name, store_dir=self.store_dir),
            last_modified=int(commit.commit_time),
            rev_count=self.rev_count(commit),
            rule=rule,
            subdir="/".join(parts) if subdir is not None else None,
        )

    def digest(self, tree: bytes, subdir: str, rule: TreeRule) -> NarDigest:
        """NAR hash and size of the directory ``subdir`` ("" for the root) of ``tree`` under ``rule``."""
        if not subdir:
            return self.trees.nar_digest(self.trees.fragment(tree, rule))
        return self.trees.nar_digest(self._subdir_fragment(tree, subdir.split("/"), rule, subdir))

    def _subdir_fragment(self, root: bytes, parts: list[str], rule: TreeRule, subdir: str) -> Fragment:
        tree = root
        path = b""
        rules: tuple[Rule, ...] = ()
        for depth, part in enumerate(parts):
            entries = self.trees.entries(tree)
            if rule is TreeRule.EXPORT_IGNORE:
                rules = rules + tuple(self.trees.rules_of(entries, path))
            name = os.fsencode(part)
            entry = next((e for e in entries if e.name == name), None)
            if entry is None:
                raise GitError(f"'{subdir}' does not exist in this revision")
            is_dir = entry.is_tree or entry.is_gitlink
            if rule is TreeRule.EXPORT_IGNORE and export_ignored(rules, path + name, is_dir):
                raise GitError(f"'{subdir}' is marked export-ignore, so Nix does not fetch it")
            last = depth == len(parts) - 1
            if not entry.is_tree:
                if last:
                    return self.trees.leaf_fragment(entry)
                raise GitError(f"'{subdir}' does not exist in this revision")
            tree = entry.oid
            path = path + name + b"/"
        fragment = self.trees.fragment(tree, rule, rules, path)
        if rule is TreeRule.EXPORT_IGNORE and not fragment.archived:
            raise GitError(f"'{subdir}' holds nothing outside export-ignore'd directories, "
                           "so git archive (and Nix) leave it out")
        return fragment
