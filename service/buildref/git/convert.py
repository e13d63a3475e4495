"""git 2.39's convert.c, the parts ``git archive`` applies to a blob: ``ident`` keywords and LF to
CRLF (with the text heuristics of ``text=auto``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TextStats:
    """convert.c ``gather_stats``."""

    lonecr: int
    lonelf: int
    crlf: int
    nul: int
    printable: int
    nonprintable: int

    @property
    def binary(self) -> bool:
        """convert.c ``convert_is_binary``."""
        return bool(self.lonecr or self.nul or (self.printable >> 7) < self.nonprintable)


_NONPRINTABLE = bytes(c for c in range(256) if (c < 32 and c not in b"\b\t\x1b\x0c\r\n") or c == 127)
_PRINTABLE = bytes(c for c in range(256) if (c >= 32 and c != 127) or c in b"\b\t\x1b\x0c")
_KEEP_ONLY_NONPRINTABLE = bytes(c for c in range(256) if c not in _NONPRINTABLE)
_KEEP_ONLY_PRINTABLE = bytes(c for c in range(256) if c not in _PRINTABLE)


def gather_stats(data: bytes) -> TextStats:
    crlf = data.count(b"\r\n")
    nonprintable = len(data.translate(None, _KEEP_ONLY_NONPRINTABLE))
    if data.endswith(b"\x1a"):
        nonprintable -= 1  # a trailing EOF (^Z) is not counted against the file
    return TextStats(
        lonecr=data.count(b"\r") - crlf,
        lonelf=data.count(b"\n") - crlf,
        crlf=crlf,
        nul=data.count(b"\0"),
        printable=len(data.translate(None, _KEEP_ONLY_PRINTABLE)),
        nonprintable=nonprintable,
    )


def crlf_to_worktree(data: bytes, auto: bool) -> bytes:
    """convert.c ``crlf_to_worktree`` for an action whose output eol is CRLF (``auto`` for
    ``text=auto``): every LF not already after a CR becomes CRLF."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf:
        return data  # no lone LF (or empty): nothing to convert
    if auto:
        # The "safer autocrlf" rules leave files with any CR, or that look binary, alone.
        stats = gather_stats(data)
        if stats.lonecr or stats.crlf or stats.binary:
            return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _count_ident(data: bytes) -> int:
    """convert.c ``count_ident``: ``$Id$`` and ``$Id:`` up to a ``$`` on the same line."""
    count = 0
    i, n = 0, len(data)
    while True:
        dollar = data.find(b"$", i)
        if dollar < 0 or n - dollar - 1 < 3:
            return count
        i = dollar + 1
        if data[i:i + 2] != b"Id":
            continue
        ch = data[i + 2]
        i += 3
        if ch == ord("$"):
            count += 1
        if ch != ord(":"):
            continue
        end = data.find(b"$", i)
        newline = data.find(b"\n", i)
        if end >= 0 and (newline < 0 or end < newline):
            count += 1
            i = end + 1
        elif newline >= 0:
            i = newline + 1
        else:
            return count


def ident_to_worktree(data: bytes, blob_hex: str) -> bytes:
    """convert.c ``ident_to_worktree``: ``$Id$`` (and ``$Id: anything $`` without spaces in it)
    become ``$Id: <blob id> $``."""
    if not _count_ident(data):
        return data
    out = bytearray()
    replacement = b"Id: " + blob_hex.encode() + b" $"
    src, n = 0, len(data)
    while True:
        dollar = data.find(b"$", src)
        if dollar < 0:
            break
        out += data[src:dollar + 1]
        src = dollar + 1
        if n - src < 3 or data[src:src + 2] != b"Id":
            continue
        if data[src + 2] == ord("$"):
            src += 3
        elif data[src + 2] == ord(":"):
            dollar = data.find(b"$", src + 3)
            if dollar < 0:
                break  # an incomplete keyword: the rest is copied as it is
            if b"\n" in data[src + 3:dollar]:
                continue
            # A space before the last character means another VCS's keyword: kept. ("$Id:$" has
            # no room for one: git's search then runs past the keyword and finds none before it.)
            space = data.find(b" ", src + 4, dollar)
            if space >= 0 and space < dollar - 1:
                continue
            src = dollar + 1
        else:
            continue
        out += replacement
    out += data[src:]
    return bytes(out)
