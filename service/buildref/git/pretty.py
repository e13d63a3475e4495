"""``$Format:...$`` in ``export-subst`` files, expanded as git 2.39's ``git archive`` does it
(archive.c ``format_subst``, pretty.c ``format_commit_message`` with archive's context: no colour,
``DATE_NORMAL`` dates, ``DEFAULT_ABBREV``).

Only what is a function of the commit is computed. A placeholder whose expansion depends on the
repository git archive runs in when Nix fetches (refs, the objects present, ``.mailmap``, GPG, the
clock) raises ``Unexpandable`` instead of being guessed, as do the few formatting features not
modelled (``%w`` wrapping, ``%<``/``%>`` columns, ``%(trailers)``, forced colours).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from enum import Enum

from buildref.git.archive import CommitData


class Why(Enum):
    REFS = "refs"  # %d, %D, %(describe): the refs present when Nix fetched
    FETCH_STATE = "fetch state"  # abbreviations, .mailmap, signatures, relative dates
    NOT_MODELLED = "not modelled"
    FAILS = "fails"  # git archive dies, so Nix cannot fetch the revision


class Unexpandable(Exception):
    """A placeholder buildref will not expand: ``placeholder`` as written, ``detail`` says why."""

    def __init__(self, placeholder: bytes, why: Why, detail: str) -> None:
        super().__init__(placeholder, why, detail)
        self.placeholder = placeholder
        self.why = why
        self.detail = detail


_SPACE = b" \t\n\r"  # git's sane_ctype isspace: not \v or \f
_C_SPACE = b" \t\n\v\f\r"  # the C library's, for strtol/strtoul
_DIGITS = b"0123456789"
_HEX = b"0123456789abcdefABCDEF"
FORMATTING_LIMIT = 16 * 1024
_WEEKDAYS = (b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
_TIMESTAMP_MAX = (1 << 63) - 1  # git's date_overflows on a 64-bit time_t
_INT_MAX = (1 << 31) - 1
_LONG_MAX = (1 << 63) - 1
_EPOCH = datetime.datetime(1970, 1, 1)


def format_subst(data: bytes, commit: CommitData) -> bytes:
    """archive.c ``format_subst``: each ``$Format:<fmt>$`` replaced by ``<fmt>`` expanded."""
    out = bytearray()
    src = 0
    while True:
        start = data.find(b"$Format:", src)
        if start < 0:
            break
        end = data.find(b"$", start + 8)
        if end < 0:
            break
        out += data[src:start]
        # git hands the format on as a C string: it ends at a NUL byte.
        _Expansion(out, commit).expand(data[start + 8:end].split(b"\0", 1)[0])
        src = end + 1
    out += data[src:]
    return bytes(out)


def _is_utf8(name: bytes) -> bool:
    return name.lower() in (b"utf-8", b"utf8")


def _line_len(msg: bytes, pos: int) -> int:
    """pretty.c ``get_one_line``: the line at ``pos`` with its newline."""
    nl = msg.find(b"\n", pos)
    return (nl + 1 if nl >= 0 else len(msg)) - pos


def _trimmed(msg: bytes, pos: int, length: int) -> int:
    while length and msg[pos + length - 1] in _SPACE:
        length -= 1
    return length


def _skip_blank_lines(msg: bytes, pos: int) -> int:
    while True:
        length = _line_len(msg, pos)
        if not length or _trimmed(msg, pos, length):
            return pos
        pos += length


def _format_subject(sb: bytearray | None, msg: bytes, pos: int, separator: bytes) -> int:
    """pretty.c ``format_subject``: the first paragraph, lines joined; the position after it."""
    first = True
    while True:
        length = _line_len(msg, pos)
        line = pos
        pos += length
        if not length:
            return pos
        length = _trimmed(msg, line, length)
        if not length:
            return pos
        if sb is not None:
            if not first:
                sb += separator
            sb += msg[line:line + length]
        first = False


def _title_char(c: int) -> bool:
    return chr(c).isascii() and (chr(c).isalnum() or c in b"._")


def _sanitized_subject(msg: bytes) -> bytes:
    """pretty.c ``format_sanitized_subject`` (``%f``)."""
    out = bytearray()
    space = 2
    i = 0
    while i < len(msg):
        c = msg[i]
        if _title_char(c):
            if space == 1:
                out += b"-"
            space = 0
            out.append(c)
            if c == ord("."):
                while i + 1 < len(msg) and msg[i + 1] == ord("."):
                    i += 1
        else:
            space |= 1
        i += 1
    return bytes(out).rstrip(b".-")


@dataclass(frozen=True, slots=True)
class _Ident:
    name: bytes
    mail: bytes
    date: bytes | None  # the timestamp digits as written
    tz: bytes | None  # sign and digits


def _split_ident(line: bytes) -> _Ident | None:
    """ident.c ``split_ident_line``."""
    lt = line.find(b"<")
    if lt < 0:
        return None
    mail_begin = lt + 1
    name_end = 0
    for cp in range(mail_begin - 2, -1, -1):
        if line[cp] not in _SPACE:
            name_end = cp + 1
            break
    mail_end = line.find(b">", mail_begin)
    if mail_end < 0:
        return None
    name, mail = line[:name_end], line[mail_begin:mail_end]
    cp = line.rfind(b">") + 1
    while cp < len(line) and line[cp] in _SPACE:
        cp += 1
    date_end = cp
    while date_end < len(line) and line[date_end] in _DIGITS:
        date_end += 1
    if cp >= len(line) or date_end == cp:
        return _Ident(name, mail, None, None)
    tz = date_end
    while tz < len(line) and line[tz] in _SPACE:
        tz += 1
    if tz >= len(line) or line[tz] not in b"+-":
        return _Ident(name, mail, None, None)
    tz_end = tz + 1
    while tz_end < len(line) and line[tz_end] in _DIGITS:
        tz_end += 1
    if tz_end == tz + 1:
        return _Ident(name, mail, None, None)
    return _Ident(name, mail, line[cp:date_end], line[tz:tz_end])


def _strtol(text: bytes, pos: int, unsigned: bool = False) -> tuple[int, int]:
    """C ``strtol``/``strtoul`` in base 10 (value clamped like the C library's); the value and the
    index after the number, ``pos`` itself when there is none."""
    i = pos
    while i < len(text) and text[i] in _C_SPACE:
        i += 1
    negative = False
    if i < len(text) and text[i] in b"+-":
        negative = text[i] == ord("-")
        i += 1
    digits = i
    while i < len(text) and text[i] in _DIGITS:
        i += 1
    if i == digits:
        return 0, pos
    value = int(text[digits:i])
    if unsigned:
        value = min(value, (1 << 64) - 1)
        return ((1 << 64) - value if negative and value else value), i
    value = -value if negative else value
    return max(-_LONG_MAX - 1, min(_LONG_MAX, value)), i


def _show_date(ident: _Ident, mode: bytes, placeholder: bytes) -> bytes:
    """pretty.c ``show_ident_date`` and date.c ``show_date`` for the modes that do not depend on
    the clock: ``d`` (normal), ``D`` (RFC 2822), ``i`` (ISO 8601), ``I`` (strict), ``s`` (short)."""
    assert ident.date is not None and ident.tz is not None
    date = min(int(ident.date), (1 << 64) - 1)
    tz = 0
    if date >= _TIMESTAMP_MAX:
        date = 0
    else:
        tz, _ = _strtol(ident.tz, 0)
        if tz >= _INT_MAX or tz <= -_INT_MAX - 1:
            tz = 0
    minutes = abs(tz) // 100 * 60 + abs(tz) % 100
    minutes = -minutes if tz < 0 else minutes
    seconds = date + minutes * 60
    if seconds < 0:
        raise Unexpandable(placeholder, Why.FAILS, "its date is before 1970, on which git archive dies")
    if seconds > 253402300799:
        raise Unexpandable(placeholder, Why.NOT_MODELLED, "dates after 9999 are not modelled")
    tm = _EPOCH + datetime.timedelta(seconds=seconds)
    wday = _WEEKDAYS[(tm.weekday() + 1) % 7]
    month = _MONTHS[tm.month - 1]
    clock = b"%02d:%02d:%02d" % (tm.hour, tm.minute, tm.second)
    if mode == b"s":
        return b"%04d-%02d-%02d" % (tm.year, tm.month, tm.day)
    if mode == b"i":
        return b"%04d-%02d-%02d %s %+05d" % (tm.year, tm.month, tm.day, clock, tz)
    if mode == b"I":
        sign = b"+" if tz >= 0 else b"-"
        return b"%04d-%02d-%02dT%s%s%02d:%02d" % (tm.year, tm.month, tm.day, clock, sign,
                                                  abs(tz) // 100, abs(tz) % 100)
    if mode == b"D":
        return b"%s, %d %s %d %s %+05d" % (wday, tm.day, month, tm.year, clock, tz)
    # DATE_NORMAL, as show_date_normal prints it with no "human" reference time: the zone is
    # hidden when it equals that function's human_tz of -1.
    text = b"%s %s %d %s %d" % (wday, month, tm.day, clock, tm.year)
    return text if tz == -1 else text + b" %+05d" % tz


class _Expansion:
    """One ``format_commit_message`` call: appends to ``sb``, which holds the file so far (``%-x``
    removes newlines before it, as git does)."""

    def __init__(self, sb: bytearray, commit: CommitData) -> None:
        self.sb = sb
        self.commit = commit

    def expand(self, fmt: bytes) -> None:
        """strbuf.c ``strbuf_expand``."""
        sb = self.sb
        i = 0
        while True:
            percent = fmt.find(b"%", i)
            if percent < 0:
                sb += fmt[i:]
                return
            sb += fmt[i:percent]
            i = percent + 1
            if fmt[i:i + 1] == b"%":
                sb += b"%"
                i += 1
                continue
            consumed = self._item(fmt[i:])
            if consumed:
                i += consumed
            else:
                sb += b"%"

    def _item(self, p: bytes) -> int:
        """pretty.c ``format_commit_item``: the ``%+x``, ``%-x`` and ``% x`` magic around one
        placeholder."""
        magic = p[:1] if p[:1] in (b"-", b"+", b" ") else b""
        if magic:
            p = p[1:]
            if p[:1] == b"w":
                return 0
        sb = self.sb
        before = len(sb)
        consumed = self._one(p)
        if not magic:
            return consumed
        if before == len(sb) and magic == b"-":
            while sb and sb[-1] == ord("\n"):
                del sb[-1]
        elif before != len(sb) and magic != b"-":
            sb[before:before] = b"\n" if magic == b"+" else b" "
        return consumed + 1

    def _one(self, p: bytes) -> int:
        """pretty.c ``format_commit_one``: how many bytes of ``p`` the placeholder takes, 0 when git
        writes it literally."""
        sb = self.sb
        commit = self.commit
        c = p[:1]
        if c == b"n":
            sb += b"\n"
            return 1
        if c == b"x" and len(p) >= 3 and p[1] in _HEX and p[2] in _HEX:
            sb.append(int(p[1:3], 16))
            return 3
        if c == b"C":
            return self._color(p)
        if c == b"w":
            return self._wrap(p)
        if c in (b"<", b">"):
            return self._padding(p)
        if p.startswith(b"(describe"):
            raise Unexpandable(_shown(p), Why.REFS, "git describe runs against the refs present")
        if c == b"H":
            sb += commit.oid.encode()
            return 1
        if c == b"T":
            sb += commit.tree.encode()
            return 1
        if c == b"P":
            sb += b" ".join(parent.encode() for parent in commit.parents)
            return 1
        if c in (b"h", b"t") or (c == b"p" and commit.parents):
            raise Unexpandable(_shown(p), Why.FETCH_STATE,
                               "git abbreviates object names against the objects in the repository "
                               "git archive runs in")
        if c == b"p":
            return 1  # no parents: nothing to abbreviate
        if c == b"m":
            sb += b">"  # get_revision_mark of a commit no walk has marked
            return 1
        if c in (b"d", b"D"):
            raise Unexpandable(_shown(p), Why.REFS, "decorations list the refs pointing at the commit")
        if c in (b"S", b"N"):
            return 0  # no --source, no notes in git archive: written literally
        if c == b"g":
            return 2 if p[1:2] and p[1:2] in b"dDsnNeE" else 0  # no reflog walk: empty
        if c == b"G":
            return self._signature(p)
        msg = self._header(p)
        if c in (b"a", b"c"):
            return self._person(p, msg, b"author " if c == b"a" else b"committer ")
        if c == b"e":
            encoding = _header_value(msg, b"encoding")
            if encoding is not None:
                sb += encoding
            return 1
        message_off = msg.index(b"\n\n") + 1
        if c == b"B":
            sb += msg[message_off + 1:]
            return 1
        subject_off = _skip_blank_lines(msg, message_off)
        if c == b"s":
            _format_subject(sb, msg, subject_off, b" ")
            return 1
        if c == b"f":
            eol = msg.find(b"\n", subject_off)
            sb += _sanitized_subject(msg[subject_off:eol if eol >= 0 else len(msg)])
            return 1
        if c == b"b":
            sb += msg[_skip_blank_lines(msg, _format_subject(None, msg, subject_off, b"")):]
            return 1
        if p.startswith(b"(trailers"):
            raise Unexpandable(_shown(p), Why.NOT_MODELLED, "%(trailers) is not modelled")
        return 0

    def _header(self, p: bytes) -> bytes:
        """The commit as git formats from it, once a placeholder needs its header or message."""
        raw = self.commit.raw
        if b"\0" in raw or b"\n\n" not in raw:
            raise Unexpandable(_shown(p), Why.NOT_MODELLED, "the commit object is unusual (NUL byte or "
                               "no message separator)")
        encoding = _header_value(raw, b"encoding")
        if encoding is not None and not _is_utf8(encoding):
            raise Unexpandable(_shown(p), Why.NOT_MODELLED,
                               f"the commit's encoding is {encoding.decode(errors='replace')} (git "
                               "re-encodes the file)")
        return raw

    def _person(self, p: bytes, msg: bytes, header: bytes) -> int:
        """pretty.c ``format_person_part``."""
        sb = self.sb
        part = p[1:2]
        line = _last_header_line(msg, header)
        ident = _split_ident(line) if line is not None else None
        if ident is not None:
            if part in (b"N", b"E", b"L"):
                raise Unexpandable(_shown(p), Why.FETCH_STATE,
                                   "mailmap lookups read the .mailmap present when Nix fetched")
            if part == b"n":
                sb += ident.name
                return 2
            if part == b"e":
                sb += ident.mail
                return 2
            if part == b"l":
                at = ident.mail.find(b"@")
                sb += ident.mail if at < 0 else ident.mail[:at]
                return 2
            if ident.date is not None:
                if part == b"t":
                    sb += ident.date
                    return 2
                if part in (b"r", b"h"):
                    raise Unexpandable(_shown(p), Why.FETCH_STATE,
                                       "relative dates depend on the time Nix fetched")
                if part in (b"d", b"D", b"i", b"I", b"s"):
                    sb += _show_date(ident, part, _shown(p))
                    return 2
        return 2 if part and part in b"netdDri" else 0

    def _signature(self, p: bytes) -> int:
        """``%G?`` and friends: for an unsigned commit, git's check gives 'N' and nothing else."""
        if _signed(self.commit.raw):
            raise Unexpandable(_shown(p), Why.FETCH_STATE,
                               "signature checks depend on the GPG setup of whoever fetched")
        part = p[1:2]
        if part == b"?":
            self.sb += b"N"
        elif part == b"T":
            self.sb += b"undefined"
        elif not part or part not in b"GSKFP":
            return 0
        return 2

    def _color(self, p: bytes) -> int:
        """pretty.c's ``%C``: git archive never colours, so only how much is consumed matters."""
        if p.startswith(b"C(auto)"):
            return 7
        if p[1:2] == b"(":
            end = p.find(b")", 2)
            if end < 0:
                return 0
            if p[2:].startswith(b"always,"):
                raise Unexpandable(_shown(p), Why.NOT_MODELLED, "forced colours are not modelled")
            return end + 1
        for name in (b"red", b"green", b"blue", b"reset"):
            if p[1:].startswith(name):
                return 1 + len(name)
        return 0

    def _wrap(self, p: bytes) -> int:
        """``%w(width,indent1,indent2)``: only the no-op ``%w()``/``%w(0...)`` is modelled."""
        if p[1:2] != b"(":
            return 0
        end = p.find(b")", 2)
        if end < 0:
            return 0
        values = [0, 0, 0]
        if end > 2:
            pos = 1
            for k in range(3):
                values[k], pos = _strtol(p, pos + 1, unsigned=True)
                if p[pos:pos + 1] != b",":
                    break
            if p[pos:pos + 1] != b")":
                return 0
        if any(v > FORMATTING_LIMIT for v in values):
            return 0
        if any(values):
            raise Unexpandable(_shown(p), Why.NOT_MODELLED, "%w() wrapping is not modelled")
        return end + 1

    def _padding(self, p: bytes) -> int:
        """pretty.c ``parse_padding_placeholder``: 0 when git writes it literally; a valid one sets
        column alignment, which is not modelled."""
        i = 1
        if p[:1] == b">" and p[1:2] and p[1:2] in b"<>":
            i = 2
        to_column = p[i:i + 1] == b"|"
        if to_column:
            i += 1
        if p[i:i + 1] != b"(":
            return 0
        start = i + 1
        end = start
        while end < len(p) and p[end] not in b",)":
            end += 1
        if end >= len(p) or end == start:
            return 0
        width, after = _strtol(p, start)
        if width < -FORMATTING_LIMIT or width > FORMATTING_LIMIT or after == start or width == 0:
            return 0
        if width < 0 and not to_column:
            return 0
        # git has now switched column alignment on for what follows, even if the rest of this
        # placeholder turns out malformed.
        raise Unexpandable(_shown(p), Why.NOT_MODELLED, "column alignment is not modelled")


def _shown(p: bytes) -> bytes:
    """The placeholder as written, for messages."""
    if p[:1] == b"(" or p[1:2] == b"(" or p[2:3] == b"(":
        close = p.find(b")")
        return b"%" + (p[:close + 1] if close >= 0 else p)
    return b"%" + p[:2 if p[:1] in (b"a", b"c", b"g", b"G") else 1]


def _header_value(msg: bytes, key: bytes) -> bytes | None:
    """commit.c ``find_commit_header``: the first header line ``key value`` before the message."""
    for line in msg.split(b"\n\n", 1)[0].split(b"\n"):
        if line.startswith(key + b" "):
            return line[len(key) + 1:]
    return None


def _last_header_line(msg: bytes, prefix: bytes) -> bytes | None:
    """pretty.c ``parse_commit_header`` keeps the last ``author``/``committer`` line."""
    found = None
    for line in msg.split(b"\n\n", 1)[0].split(b"\n"):
        if line.startswith(prefix):
            found = line[len(prefix):]
    return found


def _signed(raw: bytes) -> bool:
    """commit.c ``parse_buffer_signed_by_header``: a ``gpgsig`` header in the commit's header."""
    return any(line.startswith(b"gpgsig") for line in raw.split(b"\n\n", 1)[0].split(b"\n"))
