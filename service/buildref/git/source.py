"""A commit (or a directory in it) as the Nix source it becomes: rev, narHash, store path,
lastModified and revCount, as ``builtins.fetchGit`` reports them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from buildref.errors import BuildrefError, GitError, UnknownRevision
from buildref.git import archive
from buildref.git.archive import ArchiveFails, CommitData
from buildref.git.attributes import EMPTY
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


@dataclass(frozen=True, slots=True)
class TreeSource:
    subdir: str  # "" for the root
    rule: TreeRule
    nar_hash: Hash
    store_path: str


@dataclass(frozen=True, slots=True)
class UnknownSource:
    """A variant whose bytes buildref cannot know from the commit (see ``ArchiveUnknown``)."""

    subdir: str
    rule: TreeRule
    reason: str  # the one-line ``error: ...`` message
    ref_dependent: bool  # it depends on the refs present when Nix fetched


@dataclass(frozen=True, slots=True)
class SourceListing:
    sources: tuple[TreeSource, ...]
    unknown: tuple[UnknownSource, ...]


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
    # and it keeps every pack file of every repository open (unbounded by default): a user who
    # records many repositories would use up the service's descriptors (api/sockets.RESERVED_FDS)
    pygit2.option(Option.SET_MWINDOW_FILE_LIMIT, 64)
    for level in (ConfigLevel.SYSTEM, ConfigLevel.XDG, ConfigLevel.GLOBAL):
        pygit2.settings.search_path[level] = ""
    _configured.append(True)


class GitRepository:
    """One repository, opened once, with its tree memo."""

    def __init__(self, path: str, store_dir: str = DEFAULT_STORE_DIR) -> None:
        """The repository at ``path`` (a checkout, its ``.git``, or a bare repository); never one
        found further up, as git would: the path given is the repository meant."""
        import pygit2
        from pygit2.enums import RepositoryOpenFlag

        _configure_libgit2()
        self._pygit2 = pygit2
        try:
            self.repo: Any = pygit2.Repository(path, RepositoryOpenFlag.NO_SEARCH)
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

    def commit_data(self, commit: Any) -> CommitData:
        """What ``export-subst`` expands from: the commit object as git formats it."""
        _kind, raw = self.repo.odb.read(commit.id)
        return CommitData(str(commit.id), str(commit.tree_id), tuple(str(p) for p in commit.parent_ids),
                          bytes(raw))

    def source(self, rev: str = "HEAD", subdir: str | None = None,
               rule: TreeRule = TreeRule.EXPORT_IGNORE) -> SourceInfo:
        """The source Nix makes of ``rev`` (or of a directory in it). Raises ``ArchiveUnknown``
        (``RefDependent`` when refs decide it) when the export-ignore variant cannot be known."""
        commit = self.resolve(rev)
        data = self.commit_data(commit) if rule is TreeRule.EXPORT_IGNORE else None
        name = "source"
        if subdir is None:
            fragment = self.trees.fragment(commit.tree_id.raw, rule, commit=data)
        else:
            parts = _split_subdir(subdir)
            name = check_name(parts[-1])
            if rule is TreeRule.EXPORT_IGNORE:
                # Nix has no directory of a revision git archive fails on, wherever the cause is.
                whole = self.trees.fragment(commit.tree_id.raw, rule, commit=data)
                if isinstance(whole.problem, ArchiveFails):
                    raise whole.problem
            fragment = self._subdir_fragment(commit.tree_id.raw, parts, rule, subdir, data)
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

    def tree_sources(self, commit: Any) -> list[TreeSource]:
        """The source store paths a build can take from ``commit`` (see ``list_sources``); variants
        whose bytes cannot be known are left out."""
        return list(self.list_sources(commit).sources)

    def list_sources(self, commit: Any) -> SourceListing:
        """The source store paths a build can take from ``commit``: the root (``source``) and every
        directory (named after it, as ``./dir`` of a flake is copied), under each rule; a variant
        is listed once per rule even when both rules give the same path. Directories Nix cannot
        copy (export-ignore'd, names that are not store path names) are left out; variants whose
        bytes depend on more than the commit (``export-subst`` of refs...) are listed as unknown,
        with the reason, instead of failing the whole listing."""
        root = commit.tree_id.raw
        data = self.commit_data(commit)
        directories: list[list[str]] = []
        pending: list[tuple[bytes, list[str]]] = [(root, [])]
        while pending:
            tree, parts = pending.pop()
            for entry in self.trees.entries(tree):
                if entry.is_tree:
                    try:
                        name = entry.name.decode()
                    except UnicodeDecodeError:
                        continue
                    directories.append([*parts, name])
                    pending.append((entry.oid, [*parts, name]))
        found: list[TreeSource] = []
        unknown: list[UnknownSource] = []
        for rule in TreeRule:
            whole = self.trees.fragment(root, rule, commit=data)
            fails = whole.problem if isinstance(whole.problem, ArchiveFails) else None
            for parts in [[], *sorted(directories)]:
                subdir = "/".join(parts)
                if fails is not None:
                    unknown.append(UnknownSource(subdir, rule, str(fails), False))
                    continue
                try:
                    name = check_name(parts[-1]) if parts else "source"
                    fragment = self._subdir_fragment(root, parts, rule, subdir, data) if parts else whole
                except BuildrefError:
                    continue
                if fragment.problem is not None:
                    unknown.append(UnknownSource(subdir, rule, str(fragment.problem),
                                                 isinstance(fragment.problem, archive.RefDependent)))
                    continue
                info = self.trees.nar_digest(fragment)
                found.append(TreeSource(subdir, rule, info.nar_hash,
                                        source_path(info.nar_hash, name, store_dir=self.store_dir)))
        return SourceListing(tuple(found), tuple(unknown))

    def digest(self, commit: Any, subdir: str, rule: TreeRule) -> NarDigest:
        """NAR hash and size of the directory ``subdir`` ("" for the root) of ``commit`` under
        ``rule``; raises ``ArchiveUnknown`` when the export-ignore variant cannot be known."""
        data = self.commit_data(commit) if rule is TreeRule.EXPORT_IGNORE else None
        tree = commit.tree_id.raw
        if subdir:
            fragment = self._subdir_fragment(tree, subdir.split("/"), rule, subdir, data)
        else:
            fragment = self.trees.fragment(tree, rule, commit=data)
        return self.trees.nar_digest(fragment)

    def _subdir_fragment(self, root: bytes, parts: list[str], rule: TreeRule, subdir: str,
                         commit: CommitData | None) -> Fragment:
        tree = root
        path = b""
        stack = EMPTY
        for depth, part in enumerate(parts):
            if rule is TreeRule.EXPORT_IGNORE:
                stack = self.trees.stack_of(self.trees.entries(tree), path, stack)
            name = os.fsencode(part)
            entry = self.trees.entry(tree, name)
            if entry is None:
                raise GitError(f"'{subdir}' does not exist in this revision")
            is_dir = entry.is_tree or entry.is_gitlink
            attrs = None
            if rule is TreeRule.EXPORT_IGNORE:
                if is_dir:
                    ignored = stack.export_ignored(path + name, True)
                else:
                    attrs = stack.file_attributes(path + name)
                    ignored = attrs.export_ignore
                if ignored:
                    raise GitError(f"'{subdir}' is marked export-ignore, so Nix does not fetch it")
            last = depth == len(parts) - 1
            if not entry.is_tree:
                if last:
                    rewrite = archive.rewrite_of(attrs) if attrs is not None and entry.is_regular else None
                    return self.trees.leaf_fragment(entry, path + name, rewrite, commit)
                raise GitError(f"'{subdir}' does not exist in this revision")
            tree = entry.oid
            path = path + name + b"/"
        fragment = self.trees.fragment(tree, rule, stack, path, commit)
        if rule is TreeRule.EXPORT_IGNORE and not fragment.archived:
            raise GitError(f"'{subdir}' holds nothing outside export-ignore'd directories, "
                           "so git archive (and Nix) leave it out")
        return fragment
