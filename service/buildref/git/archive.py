"""What ``git archive`` (git 2.39, as Nix <= 2.19 runs it) writes for a regular file: the blob
after ``convert_to_working_tree`` (``ident``, end-of-line conversion, ``working-tree-encoding``)
and ``export-subst``, as convert.c and archive.c do it with no configuration (``core.autocrlf``
and ``core.eol`` unset: LF on Linux; no ``filter.<driver>`` configured). Which files are rewritten
is decided here; the conversions are in ``convert`` and the placeholders in ``pretty``.

When what git archive writes depends on more than the commit, or on something not modelled,
``ArchiveUnknown`` (or ``RefDependent``) says so instead of a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from buildref.errors import GitError
from buildref.git.attributes import FileAttributes, Value

if TYPE_CHECKING:
    from buildref.git.pretty import Unexpandable

# core.bigFileThreshold's default: git archive streams larger blobs without export-subst as they
# are, skipping every conversion.
BIG_FILE_THRESHOLD = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CommitData:
    """The commit a ``git archive`` is made of: its id, tree, parents and raw object bytes."""

    oid: str
    tree: str
    parents: tuple[str, ...]
    raw: bytes


class ArchiveUnknown(GitError):
    """What ``git archive`` writes for a file of this revision cannot be computed from the commit:
    its export-ignore variant has no known narHash (the raw variant is unaffected)."""

    def __init__(self, path: bytes, message: str) -> None:
        super().__init__(message)
        self.path = path


class RefDependent(ArchiveUnknown):
    """An ``export-subst`` placeholder that expands from the refs present when Nix fetched."""


class ArchiveFails(ArchiveUnknown):
    """``git archive`` dies on this revision, so Nix cannot fetch it (no directory of it either)."""


class CrlfAction(Enum):
    """convert.c's ``crlf_action`` once resolved with core.autocrlf unset and LF as native eol."""

    BINARY = "binary"
    TEXT_INPUT = "text-input"
    TEXT_CRLF = "text-crlf"
    AUTO_INPUT = "auto-input"
    AUTO_CRLF = "auto-crlf"


def _check_crlf(value: Value) -> str | None:
    """convert.c ``git_path_check_crlf``: "text", "binary", "input", "auto" or None (undefined)."""
    if value is True:
        return "text"
    if value is False:
        return "binary"
    if value == b"input":
        return "input"
    if value == b"auto":
        return "auto"
    return None


def crlf_action(attrs: FileAttributes) -> CrlfAction:
    """convert.c ``convert_attrs`` with core.autocrlf false and core.eol native (LF)."""
    action = _check_crlf(attrs.text)
    if action is None:
        action = _check_crlf(attrs.crlf)
    if action == "binary":
        return CrlfAction.BINARY
    auto = action == "auto"
    if attrs.eol == b"crlf":
        return CrlfAction.AUTO_CRLF if auto else CrlfAction.TEXT_CRLF
    if attrs.eol == b"lf":
        return CrlfAction.AUTO_INPUT if auto else CrlfAction.TEXT_INPUT
    if action is None:
        return CrlfAction.BINARY  # undefined, and core.autocrlf is false
    # "text" and "text=auto" alone follow core.eol: LF on Linux.
    return CrlfAction.AUTO_INPUT if auto else CrlfAction.TEXT_INPUT


@dataclass(frozen=True, slots=True)
class Rewrite:
    """How ``git archive`` changes one regular file's blob."""

    ident: bool
    to_crlf: CrlfAction | None  # TEXT_CRLF or AUTO_CRLF: lone LFs may become CRLF
    encoding: bytes | None  # a working-tree-encoding git would convert to with iconv
    encoding_fails: bool  # working-tree-encoding set or unset without a value: git archive dies
    subst: bool


def _same_encoding_as_utf8(name: bytes) -> bool:
    return name.lower() in (b"utf-8", b"utf8")


def rewrite_of(attrs: FileAttributes) -> Rewrite | None:
    """What ``git archive`` does to a regular file with these attributes; None when it writes the
    blob as it is whatever its contents."""
    action = crlf_action(attrs)
    to_crlf = action if action in (CrlfAction.TEXT_CRLF, CrlfAction.AUTO_CRLF) else None
    encoding = attrs.working_tree_encoding
    fails = isinstance(encoding, bool)
    if not isinstance(encoding, bytes) or not encoding or _same_encoding_as_utf8(encoding):
        encoding = None
    if not (attrs.ident or to_crlf or encoding or fails or attrs.export_subst):
        return None
    return Rewrite(attrs.ident, to_crlf, encoding, fails, attrs.export_subst)


def _describe(path: bytes) -> str:
    return path.decode(errors="replace")


def apply(rewrite: Rewrite, data: bytes, blob_hex: str, commit: CommitData | None,
          path: bytes) -> tuple[bytes, bool]:
    """The bytes ``git archive`` writes for the regular file ``path`` whose blob is ``data``, and
    whether they depend on the commit (an expanded ``$Format:...$``)."""
    if len(data) > BIG_FILE_THRESHOLD and not rewrite.subst:
        return data, False
    if rewrite.encoding_fails:
        raise ArchiveFails(path, f"'{_describe(path)}' has working-tree-encoding without a value: "
                                   "git archive, and so Nix, fails on this revision")
    # The conversions and git's pretty formats load only when a file needs them.
    from buildref.git import convert

    if rewrite.ident:
        data = convert.ident_to_worktree(data, blob_hex)
    if rewrite.to_crlf is not None:
        data = convert.crlf_to_worktree(data, rewrite.to_crlf is CrlfAction.AUTO_CRLF)
    if rewrite.encoding is not None and data:
        raise ArchiveUnknown(path, f"'{_describe(path)}' has working-tree-encoding="
                                   f"{rewrite.encoding.decode(errors='replace')}: git archive converts it "
                                   "with iconv, which buildref does not model")
    if not rewrite.subst or b"$Format:" not in data:
        return data, False
    assert commit is not None
    from buildref.git import pretty

    try:
        return pretty.format_subst(data, commit), True
    except pretty.Unexpandable as e:
        raise _unexpandable(path, e) from None


def _unexpandable(path: bytes, e: Unexpandable) -> ArchiveUnknown:
    from buildref.git.pretty import Why

    where = f"'{_describe(path)}' is export-subst and uses {e.placeholder.decode(errors='replace')}"
    if e.why is Why.REFS:
        return RefDependent(path, f"{where}, which git archive expands from the refs present when Nix "
                                  "fetched the revision: its narHash depends on those refs")
    if e.why is Why.FAILS:
        return ArchiveFails(path, f"{where}: {e.detail}, so Nix cannot fetch this revision")
    if e.why is Why.FETCH_STATE:
        return ArchiveUnknown(path, f"{where}: {e.detail}, so its narHash depends on the repository "
                                    "Nix fetched from")
    return ArchiveUnknown(path, f"{where}: {e.detail}")
