"""Reading a user's repository no further than that user could.

The query socket is open to every local user and the service may read more than they can, so a
repository recorded by a user (not configured, not root's) is read only after checking, as that
user: every directory on the way to its git directory (search permission, symbolic links followed
as the kernel would for them), the git directory it really is (a ``.git`` file's ``gitdir:``, a
worktree's ``commondir``) owned by them, and nothing inside it leading elsewhere (no symbolic
link, no directory of someone else's, no file they could not read, no borrowed objects).

A check and a read are two moments: the user could swap a directory for a link in between. So each
piece of git work is checked again after it ran, by the inode and change time of every directory
it could have gone through (a rename changes both; a user cannot set a change time), and thrown
away when anything moved. This module does the checks; :mod:`buildref.sources.gitwork` applies them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from collections import deque
from dataclasses import dataclass

from buildref.errors import Forbidden, quoted

READ, WRITE, SEARCH = 4, 2, 1
MAX_LINKS = 40  # symbolic links followed on one path, as Linux allows


class Denied(Forbidden):
    """The user could not read it, or it leads somewhere they could not."""


def not_yours(spec: str) -> Forbidden:
    """The one answer for a path a user may not have recorded, whether it is missing, unreadable
    or someone else's: different answers would tell them which."""
    return Forbidden(f"{quoted(spec)} is not a git repository of yours that you can read: a user can record"
                     " only their own repositories (root can record any)")


def trusted(uid: int | None) -> bool:
    """Whether a caller can read whatever the service can: root, the service's own user, or the
    service itself (``None``)."""
    return uid is None or uid == 0 or uid == os.geteuid()


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user as file permissions see them: a uid and every group it is in."""

    uid: int
    gids: frozenset[int]

    @classmethod
    def of(cls, uid: int) -> Credentials:
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:  # a uid with no account (a container's, say): its own bits and others'
            return cls(uid, frozenset())
        return cls(uid, frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid)))

    def may(self, st: os.stat_result, want: int) -> bool:
        """Whether the mode bits of ``st`` give this user ``want`` (READ, WRITE, SEARCH, or'ed)."""
        if st.st_uid == self.uid:
            bits = st.st_mode >> 6
        elif st.st_gid in self.gids:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & want == want


def resolve_as(path: str, who: Credentials) -> str:
    """The real path of the absolute ``path`` as the kernel resolves it for ``who``: each directory
    passed through must let them search it. Raises :class:`Denied` (the same for a path that is
    not there and one they may not see: the answer must not tell them apart)."""
    if not path.startswith("/"):
        raise Denied(f"{quoted(path)} is not an absolute path")
    parts = deque(path.split("/"))
    current, links = "/", 0
    try:
        while parts:
            name = parts.popleft()
            if name in ("", "."):
                continue
            if not who.may(os.stat(current), SEARCH):
                raise Denied("not searchable")
            if name == "..":
                current = os.path.dirname(current)
                continue
            candidate = os.path.join(current, name)
            st = os.lstat(candidate)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_LINKS:
                    raise Denied("too many links")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    current = "/"
                parts.extendleft(reversed(target.split("/")))
                continue
            current = candidate
    except OSError:
        raise Denied("not there") from None
    return current


@dataclass(frozen=True, slots=True)
class GitDirs:
    """Where libgit2 reads a repository: its git directory, and the common one holding objects and
    refs (the same but for a worktree)."""

    git_dir: str
    common_dir: str


def locate(path: str, who: Credentials) -> GitDirs:
    """The git directories of the repository at ``path`` (a checkout, a worktree or a bare
    repository), resolved as ``who`` and owned by them."""
    top = resolve_as(path, who)
    dot_git = os.path.join(top, ".git")
    try:
        st = os.lstat(dot_git)
    except FileNotFoundError:
        git_dir = top  # a bare repository, or not a repository (libgit2 says which)
    except OSError:
        raise Denied("not there") from None
    else:
        if stat.S_ISREG(st.st_mode):
            git_dir = resolve_as(os.path.join(top, _pointer(dot_git, st, who, "gitdir:")), who)
        else:
            git_dir = resolve_as(dot_git, who)
    common_dir = git_dir
    commondir = os.path.join(git_dir, "commondir")
    try:
        st = os.lstat(commondir)
    except FileNotFoundError:
        pass
    except OSError:
        raise Denied("not there") from None
    else:
        if not stat.S_ISREG(st.st_mode):
            raise Denied("not there")
        common_dir = resolve_as(os.path.join(git_dir, _pointer(commondir, st, who, "")), who)
    for directory in {git_dir, common_dir}:
        try:
            st = os.stat(directory)
        except OSError:
            raise Denied("not there") from None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != who.uid or not who.may(st, READ | SEARCH):
            raise Denied("not theirs")
    return GitDirs(git_dir, common_dir)


def _pointer(path: str, st: os.stat_result, who: Credentials, prefix: str) -> str:
    """The path a ``.git`` or ``commondir`` file names, read only if ``who`` may read it."""
    if st.st_uid != who.uid or not who.may(st, READ) or st.st_size > 4096:
        raise Denied("not theirs")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(4096).strip()
    except OSError:
        raise Denied("not there") from None
    if not text.startswith(prefix):
        raise Denied("not a repository")
    return text.removeprefix(prefix).strip()


_POINTERS = ("commondir", "config")

# (path, device, inode, change time) of each directory (and file naming another place) a piece of
# git work could pass through
Fingerprint = tuple[tuple[str, int, int, int], ...]


def scan(dirs: GitDirs, who: Credentials) -> Fingerprint:
    """Check everything inside the git directories (see the module's docstring); their fingerprint.
    Messages name only paths inside the user's own git directory."""
    entries: dict[str, tuple[str, int, int, int]] = {}
    roots = [dirs.common_dir]
    if not (dirs.git_dir + "/").startswith(dirs.common_dir + "/"):  # a worktree's lies inside
        roots.append(dirs.git_dir)
    for root in roots:
        for component in _on_the_way(root, who):
            entries[component[0]] = component
        _walk(root, who, entries)
    alternates = os.path.join(dirs.common_dir, "objects", "info", "alternates")
    with contextlib.suppress(OSError):
        if os.path.getsize(alternates) > 0:
            raise Forbidden(f"'{alternates}' borrows objects from another repository: buildref does not"
                            " follow alternates in a user's repository")
    # files whose contents lead libgit2 elsewhere: a change in place moves no directory
    for path in {os.path.join(d, name) for d in roots for name in _POINTERS} | {alternates}:
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            entries[path] = (path, st.st_dev, st.st_ino, st.st_ctime_ns)
    return tuple(sorted(entries.values()))


def _on_the_way(path: str, who: Credentials) -> list[tuple[str, int, int, int]]:
    """The directories from ``/`` to ``path`` (a real path) that ``who`` could rename or replace:
    theirs, or in a directory they may write to. ``path`` itself always."""
    found = []
    parent: os.stat_result | None = None
    current = "/"
    for name in ["", *[p for p in path.split("/") if p]]:
        current = os.path.join(current, name) if name else "/"
        try:
            st = os.lstat(current)
        except OSError:
            raise Denied("not there") from None
        if current == path or st.st_uid == who.uid or (parent is not None and who.may(parent, WRITE)):
            found.append((current, st.st_dev, st.st_ino, st.st_ctime_ns))
        parent = st
    return found


def _walk(root: str, who: Credentials, entries: dict[str, tuple[str, int, int, int]]) -> None:
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as listing:
                children = list(listing)
        except OSError as e:
            raise Forbidden(f"cannot read '{directory}': {e.strerror}") from None
        for entry in children:
            try:
                if entry.is_symlink():
                    raise Forbidden(f"'{entry.path}' is a symbolic link: buildref follows no link inside"
                                    " a user's repository")
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                raise Forbidden(f"cannot read '{entry.path}': {e.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                if st.st_uid != who.uid:
                    raise Forbidden(f"'{entry.path}' belongs to someone else")
                entries[entry.path] = (entry.path, st.st_dev, st.st_ino, st.st_ctime_ns)
                stack.append(entry.path)
            elif not stat.S_ISREG(st.st_mode) or not (st.st_uid == who.uid or who.may(st, READ)):
                raise Forbidden(f"'{entry.path}' is not a file of yours")


def unchanged(print_: Fingerprint) -> bool:
    """Whether every directory of a fingerprint is still the same one, unchanged."""
    for path, dev, ino, ctime in print_:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if (st.st_dev, st.st_ino, st.st_ctime_ns) != (dev, ino, ctime):
            return False
    return True
