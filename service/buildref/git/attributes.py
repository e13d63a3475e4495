"""The ``export-ignore`` attribute as ``git archive`` decides it from ``.gitattributes`` files.

Only what decides ``export-ignore`` is modelled: patterns (git's wildmatch, basename patterns for
patterns without ``/``, ``dir/`` patterns that match directories only), and precedence (a deeper
``.gitattributes`` beats a shallower one, a later line beats an earlier one, and ``-export-ignore``
or ``!export-ignore`` stop the search like a set value does). Attribute macros, ``info/attributes``
and global attribute files are not read: they are not part of the commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

ATTRIBUTE = b"export-ignore"


class State(Enum):
    SET = "set"
    UNSET = "unset"  # -export-ignore
    UNSPECIFIED = "unspecified"  # !export-ignore
    VALUE = "value"  # export-ignore=... (not "set", so not ignored)


@dataclass(frozen=True, slots=True)
class Rule:
    base: bytes  # directory of the .gitattributes, "" or ending in "/"
    pattern: bytes
    regex: re.Pattern[bytes]
    basename_only: bool
    directory_only: bool
    state: State


_OCTAL = re.compile(rb"\\([0-7]{1,3})")
_C_ESCAPES = {b"a": b"\a", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t",
              b"v": b"\v", b'"': b'"', b"\\": b"\\"}


def _unquote(text: bytes) -> tuple[bytes, bytes] | None:
    """A C-quoted pattern (``"a b"``) and what follows it; None when the quote is not closed."""
    out = bytearray()
    i = 1
    while i < len(text):
        c = text[i:i + 1]
        if c == b'"':
            return bytes(out), text[i + 1:]
        if c == b"\\" and i + 1 < len(text):
            m = _OCTAL.match(text, i)
            if m:
                out.append(int(m.group(1), 8) & 0xFF)
                i = m.end()
                continue
            nxt = text[i + 1:i + 2]
            out += _C_ESCAPES.get(nxt, nxt)
            i += 2
            continue
        out += c
        i += 1
    return None


def parse_attributes(data: bytes, base: bytes) -> list[Rule]:
    """The rules of one ``.gitattributes`` file (at directory ``base``) that mention export-ignore."""
    rules = []
    for raw_line in data.split(b"\n"):
        line = raw_line.rstrip(b"\r").lstrip(b" \t")
        if not line or line.startswith(b"#"):
            continue
        if line.startswith(b'"'):
            quoted = _unquote(line)
            if quoted is None:
                continue
            pattern, rest = quoted
        else:
            pattern, _, rest = line.replace(b"\t", b" ").partition(b" ")
        if pattern.startswith(b"[attr]") or pattern.startswith(b"!"):
            continue  # macros are not modelled; negative patterns are ignored by git
        state = None
        for attr in rest.split():
            if attr == ATTRIBUTE:
                state = State.SET
            elif attr == b"-" + ATTRIBUTE:
                state = State.UNSET
            elif attr == b"!" + ATTRIBUTE:
                state = State.UNSPECIFIED
            elif attr.startswith(ATTRIBUTE + b"="):
                state = State.VALUE
        if state is not None:
            rules.append(_rule(base, pattern, state))
    return rules


def _rule(base: bytes, pattern: bytes, state: State) -> Rule:
    directory_only = pattern.endswith(b"/")
    if directory_only:
        pattern = pattern[:-1]
    basename_only = b"/" not in pattern
    if pattern.startswith(b"/"):
        pattern = pattern[1:]
    regex = re.compile(wildmatch_regex(pattern, pathname=not basename_only), re.DOTALL)
    return Rule(base, pattern, regex, basename_only, directory_only, state)


_POSIX_CLASSES = {
    b"alnum": b"a-zA-Z0-9", b"alpha": b"a-zA-Z", b"blank": b" \\t", b"cntrl": b"\\x00-\\x1f\\x7f",
    b"digit": b"0-9", b"graph": b"\\x21-\\x7e", b"lower": b"a-z", b"print": b"\\x20-\\x7e",
    b"punct": b"!-/:-@\\[-`{-~", b"space": b" \\t\\n\\r\\v\\f", b"upper": b"A-Z",
    b"xdigit": b"0-9a-fA-F",
}


def wildmatch_regex(pattern: bytes, pathname: bool) -> bytes:
    """Translate git's wildmatch pattern to a regular expression. With ``pathname`` (WM_PATHNAME)
    ``*``, ``?`` and ``[...]`` stop at ``/`` and ``**`` between slashes spans directories."""
    out = bytearray()
    i, n = 0, len(pattern)
    not_slash = b"[^/]" if pathname else b"."
    while i < n:
        c = pattern[i:i + 1]
        if c == b"*":
            j = i
            while j < n and pattern[j:j + 1] == b"*":
                j += 1
            double = j - i >= 2
            at_start = i == 0 or pattern[i - 1:i] == b"/"
            at_end = j == n or pattern[j:j + 1] == b"/"
            if pathname and double and at_start and at_end:
                if j == n:
                    out += b".*"
                    i = j
                else:  # "**/" matches zero or more leading directories
                    out += b"(?:.*/)?"
                    i = j + 1
                continue
            out += not_slash + b"*"
            i = j
        elif c == b"?":
            out += not_slash
            i += 1
        elif c == b"[":
            end, cls = _char_class(pattern, i, pathname)
            if end is None:
                out += re.escape(c)
                i += 1
            else:
                out += cls
                i = end
        elif c == b"\\" and i + 1 < n:
            out += re.escape(pattern[i + 1:i + 2])
            i += 2
        else:
            out += re.escape(c)
            i += 1
    return bytes(out)


def _char_class(pattern: bytes, start: int, pathname: bool) -> tuple[int | None, bytes]:
    i = start + 1
    negate = i < len(pattern) and pattern[i:i + 1] in (b"!", b"^")
    if negate:
        i += 1
    members = bytearray()
    first = True
    while i < len(pattern):
        c = pattern[i:i + 1]
        if c == b"]" and not first:
            body = bytes(members)
            if negate:
                return i + 1, b"[^" + body + (b"/" if pathname else b"") + b"]"
            return i + 1, b"[" + body + b"]"
        if pattern[i:i + 2] == b"[:":
            close = pattern.find(b":]", i + 2)
            if close != -1:
                posix = _POSIX_CLASSES.get(pattern[i + 2:close])
                if posix is None:
                    return None, b""  # an unknown class: the "[" is then taken literally
                members += posix
                i = close + 2
                first = False
                continue
        if c == b"\\" and i + 1 < len(pattern):
            members += b"\\" + pattern[i + 1:i + 2]
            i += 2
        elif c in (b"\\", b"^", b"]", b"["):
            members += b"\\" + c
            i += 1
        else:
            members += c
            i += 1
        first = False
    return None, b""


def _matches(rule: Rule, path: bytes, is_dir: bool) -> bool:
    if rule.directory_only and not is_dir:
        return False
    if not path.startswith(rule.base):
        return False
    if rule.basename_only:
        name = path.rsplit(b"/", 1)[-1]
        return rule.regex.fullmatch(name) is not None
    return rule.regex.fullmatch(path[len(rule.base):]) is not None


def export_ignored(rules: tuple[Rule, ...], path: bytes, is_dir: bool) -> bool:
    """Whether ``path`` (relative to the repository root) is left out of ``git archive``.
    ``rules`` are in file order, shallower files first."""
    for rule in reversed(rules):
        if _matches(rule, path, is_dir):
            return rule.state is State.SET
    return False
