"""Git attributes of a commit's paths as ``git archive`` decides them from ``.gitattributes`` files.

Modelled as git 2.39's attr.c does it for ``git archive`` (attributes read from the commit's tree):
lines and C-quoted patterns, git's wildmatch (basename patterns for patterns without ``/``, ``dir/``
patterns that match directories only), invalid attribute names dropping their whole line, macros
(the built-in ``binary`` and ``[attr]`` lines of the root ``.gitattributes`` only), and precedence:
a deeper ``.gitattributes`` beats a shallower one, a later line beats an earlier one, within a line
the last state wins, and the first rule to set an attribute (``-attr`` and ``!attr`` included)
decides it; a macro set to true expands at that point into what is still undecided.

Only the attributes ``git archive`` acts on are kept (see ``ARCHIVE_ATTRIBUTES``), with the macros
that reach them. ``$GIT_DIR/info/attributes`` and global attribute files are not read: they are
machine state, not part of the commit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# An attribute's value: True (set), False (``-attr``), None (unspecified: ``!attr``, or no rule),
# or the bytes of ``attr=value``.
Value = bool | bytes | None
State = tuple[bytes, Value]

EXPORT_IGNORE = b"export-ignore"
EXPORT_SUBST = b"export-subst"
TEXT = b"text"
CRLF = b"crlf"
EOL = b"eol"
IDENT = b"ident"
WORKING_TREE_ENCODING = b"working-tree-encoding"
ARCHIVE_ATTRIBUTES = frozenset({EXPORT_IGNORE, EXPORT_SUBST, TEXT, CRLF, EOL, IDENT, WORKING_TREE_ENCODING})
_FILE_ATTRIBUTES = tuple(sorted(ARCHIVE_ATTRIBUTES))
_DIRECTORY_ATTRIBUTES = (EXPORT_IGNORE,)

MAX_LINE_LENGTH = 2048  # attr.h ATTR_MAX_LINE_LENGTH: longer lines are ignored
MAX_FILE_SIZE = 100 * 1024 * 1024  # attr.h ATTR_MAX_FILE_SIZE: larger files are ignored
_BLANK = b" \t\r\n"
_MACRO_PREFIX = b"[attr]"
_BUILTIN_MACROS: tuple[tuple[bytes, tuple[State, ...]], ...] = (
    (b"binary", ((b"diff", False), (b"merge", False), (TEXT, False))),
)


@dataclass(frozen=True, slots=True)
class Rule:
    base: bytes  # directory of the .gitattributes, "" or ending in "/"
    pattern: bytes
    regex: re.Pattern[bytes]
    basename_only: bool
    directory_only: bool
    states: tuple[State, ...]  # in line order


@dataclass(frozen=True, slots=True)
class AttributesFile:
    """One parsed ``.gitattributes``: its pattern rules and (root file only) its macros."""

    rules: tuple[Rule, ...]
    macros: tuple[tuple[bytes, tuple[State, ...]], ...]


_NAME = re.compile(rb"[-.\w]+", re.ASCII)


def _name_valid(name: bytes) -> bool:
    return bool(name) and not name.startswith(b"-") and _NAME.fullmatch(name) is not None


_C_ESCAPES = {b"a": 7, b"b": 8, b"f": 12, b"n": 10, b"r": 13, b"t": 9, b"v": 11, b"\\": 92, b'"': 34}


def _unquote(text: bytes) -> tuple[bytes, bytes] | None:
    """quote.c ``unquote_c_style``: a C-quoted pattern and what follows the closing quote; None when
    git cannot unquote it (then the quote is taken literally)."""
    out = bytearray()
    i = 1
    n = len(text)
    while True:
        j = i
        while j < n and text[j] not in b'"\\':
            j += 1
        out += text[i:j]
        if j >= n:
            return None
        if text[j] == ord('"'):
            return bytes(out), text[j + 1:]
        ch = text[j + 1:j + 2]
        i = j + 2
        if ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        elif ch in (b"0", b"1", b"2", b"3"):
            digits = text[j + 1:j + 4]
            if len(digits) < 3 or any(d not in b"01234567" for d in digits[1:]):
                return None
            out.append(int(digits, 8))
            i = j + 4
        else:
            return None


def _span(data: bytes, start: int, chars: bytes) -> int:
    """The end of the run of ``chars`` starting at ``start`` (``strspn``)."""
    i = start
    while i < len(data) and data[i] in chars:
        i += 1
    return i


def _until(data: bytes, start: int, chars: bytes) -> int:
    """The index of the first of ``chars`` at or after ``start`` (``strcspn``)."""
    i = start
    while i < len(data) and data[i] not in chars:
        i += 1
    return i


def _parse_states(text: bytes) -> list[State] | None:
    """attr.c ``parse_attr`` over the rest of a line; None when a name is invalid (git then drops
    the whole line)."""
    states: list[State] = []
    i = _span(text, 0, _BLANK)
    while i < len(text):
        end = _until(text, i, _BLANK)
        token = text[i:end]
        name, equals, value = token.partition(b"=")
        state: Value
        if name[:1] in (b"-", b"!"):
            state = False if name[:1] == b"-" else None
            name = name[1:]
        else:
            state = value if equals else True
        if not _name_valid(name):
            return None
        states.append((name, state))
        i = _span(text, end, _BLANK)
    return states


def _parse_line(line: bytes, base: bytes, macro_ok: bool) -> Rule | tuple[bytes, tuple[State, ...]] | None:
    """attr.c ``parse_attr_line``: a pattern rule, a macro definition, or None (ignored line)."""
    start = _span(line, 0, _BLANK)
    if start == len(line) or line[start] == ord("#"):
        return None
    if len(line) >= MAX_LINE_LENGTH:
        return None
    rest = line[start:]
    quoted = _unquote(rest) if rest.startswith(b'"') else None
    if quoted is not None:
        name, states_text = quoted
        name = name.split(b"\0", 1)[0]  # git copies the pattern as a C string
    else:
        end = _until(rest, 0, _BLANK)
        name, states_text = rest[:end], rest[end:]
    if len(name) > len(_MACRO_PREFIX) and name.startswith(_MACRO_PREFIX):
        if not macro_ok:
            return None  # "[attr]x not allowed" outside the root .gitattributes
        macro = name[len(_MACRO_PREFIX):]
        macro = macro[_span(macro, 0, _BLANK):]
        macro = macro[:_until(macro, 0, _BLANK)]
        if not _name_valid(macro):
            return None
        macro_states = _parse_states(states_text)
        return None if macro_states is None else (macro, tuple(macro_states))
    if name.startswith(b"!"):
        return None  # negative patterns are ignored in git attributes
    states = _parse_states(states_text)
    if states is None:
        return None
    return _rule(base, name, tuple(states))


def parse_attributes(data: bytes, base: bytes, macro_ok: bool = False) -> AttributesFile:
    """One ``.gitattributes`` blob at directory ``base`` ("" or ending in "/"). ``macro_ok`` for the
    root file only: elsewhere git ignores ``[attr]`` lines."""
    if len(data) >= MAX_FILE_SIZE:
        return AttributesFile((), ())
    data = data.split(b"\0", 1)[0]  # git reads the blob as a C string
    rules: list[Rule] = []
    macros: list[tuple[bytes, tuple[State, ...]]] = []
    for line in data.split(b"\n"):
        parsed = _parse_line(line, base, macro_ok)
        if isinstance(parsed, Rule):
            rules.append(parsed)
        elif parsed is not None:
            macros.append(parsed)
    return AttributesFile(tuple(rules), tuple(macros))


def _rule(base: bytes, pattern: bytes, states: tuple[State, ...]) -> Rule:
    directory_only = pattern.endswith(b"/")
    if directory_only:
        pattern = pattern[:-1]
    basename_only = b"/" not in pattern
    if pattern.startswith(b"/"):
        pattern = pattern[1:]
    regex = re.compile(wildmatch_regex(pattern, pathname=not basename_only), re.DOTALL)
    return Rule(base, pattern, regex, basename_only, directory_only, states)


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


def _matches(rule: Rule, path: bytes, basename: bytes, is_dir: bool) -> bool:
    if rule.directory_only and not is_dir:
        return False
    if rule.basename_only:
        # git matches basename patterns without looking at the rule's directory: only the
        # .gitattributes of the path's ancestors are on its stack.
        return rule.regex.fullmatch(basename) is not None
    if not path.startswith(rule.base):
        return False
    return rule.regex.fullmatch(path[len(rule.base):]) is not None


def _is_trigger(name: bytes, value: Value) -> bool:
    """A state that can make ``git archive`` leave out or rewrite a file (with core.autocrlf and
    core.eol unset, ``text`` and ``crlf`` alone never change a file: only ``eol=crlf`` does)."""
    if name == WORKING_TREE_ENCODING:
        return value is not None
    if name == EOL:
        return value == b"crlf"
    return name in (EXPORT_IGNORE, EXPORT_SUBST, IDENT) and value is True


@dataclass(frozen=True, slots=True)
class FileAttributes:
    """What ``git archive`` reads for one path (git's ``check_attr`` values)."""

    export_ignore: bool
    export_subst: bool
    ident: bool
    text: Value
    crlf: Value
    eol: Value
    working_tree_encoding: Value


NO_ATTRIBUTES = FileAttributes(False, False, False, None, None, None, None)


class AttributeStack:
    """The rules in effect in one directory: those of its own and its ancestors' ``.gitattributes``
    (shallower first, only states that reach ``ARCHIVE_ATTRIBUTES``) and the macros. Immutable and
    hashable, so it can key the tree memo."""

    __slots__ = ("_hash", "active", "anchored", "macros", "relevant", "rules")

    def __init__(self, rules: tuple[Rule, ...], macros: Mapping[bytes, tuple[State, ...]],
                 relevant: frozenset[bytes]) -> None:
        self.rules = rules
        self.macros = dict(macros)
        self.relevant = relevant
        # Whether any path could be left out or rewritten: without it nothing needs resolving.
        self.active = any(self._reaches_trigger(rule.states, set()) for rule in rules)
        # Whether a rule's meaning depends on where a subtree sits (a pattern with a "/").
        self.anchored = any(not rule.basename_only for rule in rules)
        self._hash = hash((rules, tuple(sorted(self.macros.items()))))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, AttributeStack):
            return NotImplemented
        return self._hash == other._hash and self.rules == other.rules and self.macros == other.macros

    def _reaches_trigger(self, states: Iterable[State], seen: set[bytes]) -> bool:
        for name, value in states:
            if _is_trigger(name, value):
                return True
            if value is True and name in self.macros and name not in seen:
                seen.add(name)
                if self._reaches_trigger(self.macros[name], seen):
                    return True
        return False

    @classmethod
    def root(cls, root_file: AttributesFile | None = None) -> AttributeStack:
        """The stack of the repository root: built-in macros, then the root ``.gitattributes``."""
        macros = dict(_BUILTIN_MACROS)
        if root_file is not None:
            for name, states in root_file.macros:  # the last definition wins
                macros[name] = states
        relevant = set(ARCHIVE_ATTRIBUTES)
        changed = True
        while changed:  # macros that expand (maybe through other macros) into what we track
            changed = False
            for name, states in macros.items():
                if name not in relevant and any(s[0] in relevant for s in states):
                    relevant.add(name)
                    changed = True
        kept = frozenset(relevant)
        kept_macros = {name: _keep(states, kept) for name, states in macros.items() if name in kept}
        stack = cls((), kept_macros, kept)
        return stack if root_file is None else stack.push(root_file)

    def push(self, file: AttributesFile) -> AttributeStack:
        """This stack with a deeper ``.gitattributes`` on top (its macros are not used: git allows
        them only in the root file, which ``root`` reads)."""
        added = []
        for rule in file.rules:
            states = _keep(rule.states, self.relevant)
            if states:
                added.append(rule if states == rule.states else Rule(
                    rule.base, rule.pattern, rule.regex, rule.basename_only, rule.directory_only, states))
        if not added:
            return self
        return AttributeStack(self.rules + tuple(added), self.macros, self.relevant)

    def _resolve(self, path: bytes, is_dir: bool, wanted: tuple[bytes, ...]) -> dict[bytes, Value]:
        values: dict[bytes, Value] = {}
        basename = path.rsplit(b"/", 1)[-1]
        for rule in reversed(self.rules):
            if _matches(rule, path, basename, is_dir):
                self._fill(rule.states, values)
                if all(name in values for name in wanted):
                    break
        return values

    def _fill(self, states: tuple[State, ...], values: dict[bytes, Value]) -> None:
        """attr.c ``fill_one``: the last state first; only undecided attributes take a value; a
        macro expands when it becomes true."""
        for name, value in reversed(states):
            if name not in values:
                values[name] = value
                if value is True and name in self.macros:
                    self._fill(self.macros[name], values)

    def export_ignored(self, path: bytes, is_dir: bool) -> bool:
        """Whether ``git archive`` leaves ``path`` (relative to the repository root) out."""
        if not self.active:
            return False
        return self._resolve(path, is_dir, _DIRECTORY_ATTRIBUTES).get(EXPORT_IGNORE) is True

    def file_attributes(self, path: bytes) -> FileAttributes:
        """Everything ``git archive`` checks for the file (or symlink) at ``path``."""
        if not self.active:
            return NO_ATTRIBUTES
        values = self._resolve(path, False, _FILE_ATTRIBUTES)
        return FileAttributes(
            export_ignore=values.get(EXPORT_IGNORE) is True,
            export_subst=values.get(EXPORT_SUBST) is True,
            ident=values.get(IDENT) is True,
            text=values.get(TEXT),
            crlf=values.get(CRLF),
            eol=values.get(EOL),
            working_tree_encoding=values.get(WORKING_TREE_ENCODING),
        )

    def value(self, path: bytes, is_dir: bool, name: bytes) -> Value:
        """One attribute's value at ``path`` (what ``git check-attr`` reports), for tests."""
        return self._resolve(path, is_dir, (name,)).get(name)


def _keep(states: tuple[State, ...], relevant: frozenset[bytes]) -> tuple[State, ...]:
    return tuple(s for s in states if s[0] in relevant)


EMPTY = AttributeStack.root()
