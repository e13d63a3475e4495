"""The JSON ``nix show-derivation`` prints (Nix 2.8 shape), byte for byte.

Nix 2.8's JSON writer escapes only ``"``, ``\\``, ``\\n``, ``\\r``, ``\\t`` and other bytes below 0x20
(as ``\\u00xx``) and copies every other byte as it is, so values that are not UTF-8 come out raw: the
output is bytes, not text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import assert_never

from buildref.nix.aterm import Sections
from buildref.nix.derivation import Derivation, OutputKind
from buildref.nix.drvhash import fixed_path
from buildref.nix.storepath import DEFAULT_STORE_DIR, HASH_PART_LEN

_NEEDS_ESCAPE = re.compile(rb'[\x00-\x1f"\\]')
_ESCAPES = {b'"': b'\\"', b"\\": b"\\\\", b"\n": b"\\n", b"\r": b"\\r", b"\t": b"\\t"}


def _escape_match(m: re.Match[bytes]) -> bytes:
    c = m.group(0)
    return _ESCAPES.get(c) or b"\\u%04x" % c[0]


def json_string(value: bytes) -> bytes:
    if _NEEDS_ESCAPE.search(value) is None:
        return b'"' + value + b'"'
    return b'"' + _NEEDS_ESCAPE.sub(_escape_match, value) + b'"'


def _s(value: str) -> bytes:
    """Store paths, output names and hashes: plain text, so string methods beat a regex search."""
    if value.isprintable() and '"' not in value and "\\" not in value:
        return b'"' + value.encode() + b'"'
    return json_string(value.encode())


_PAD = [b"\n" + b"  " * depth for depth in range(12)]  # a new line indented to depth
_JOIN = [b"," + pad for pad in _PAD]


def _object(indent: int, members: list[tuple[bytes, bytes]]) -> bytes:
    """``members`` are (quoted key, rendered value) pairs; values already carry their own nesting."""
    if not members:
        return b"{}"
    body = _JOIN[indent + 1].join([key + b": " + value for key, value in members])
    return b"{" + _PAD[indent + 1] + body + _PAD[indent] + b"}"


def _list(indent: int, items: Iterable[bytes]) -> bytes:
    body = _JOIN[indent + 1].join(items)
    return b"[" + _PAD[indent + 1] + body + _PAD[indent] + b"]" if body else b"[]"


# Nix writes ATerm strings with exactly the escapes its 2.8 JSON writer uses (\" \\ \n \r \t) and
# copies other bytes raw, so in a file with no other escapes and no raw control bytes
# (``Sections.json_ready``) the escaped strings are already JSON: env and args need no unescaping and
# re-escaping string by string. Other files take the general path: decode, then escape each string.


def _env(sections: Sections, drv: Callable[[], Derivation], indent: int) -> bytes:
    if not sections.env:
        return b"{}"
    if sections.json_ready:
        pairs = sections.env
        if all(a[0] < b[0] for a, b in pairwise(pairs)) and not any(b"\\" in k for k, _ in pairs):
            body = (b'"' + _JOIN[indent + 1] + b'"').join([k + b'": "' + v for k, v in pairs])
            return b"{" + _PAD[indent + 1] + b'"' + body + b'"' + _PAD[indent] + b"}"
    env = dict(drv().env)  # as Nix's std::map: sorted, last duplicate wins
    return _object(indent, [(json_string(k), json_string(v)) for k, v in sorted(env.items())])


def _args(sections: Sections, drv: Callable[[], Derivation], indent: int) -> bytes:
    if not sections.args:
        return b"[]"
    if not sections.json_ready:
        return _list(indent, (json_string(a) for a in drv().args))
    body = (b'"' + _JOIN[indent + 1] + b'"').join(sections.args)
    return b"[" + _PAD[indent + 1] + b'"' + body + b'"' + _PAD[indent] + b"]"


def _builder(sections: Sections, drv: Callable[[], Derivation]) -> bytes:
    return b'"' + sections.builder + b'"' if sections.json_ready else json_string(drv().builder)


def _drv_object(name: str, sections: Sections, indent: int, store_dir: str) -> bytes:
    decoded: list[Derivation] = []

    def drv() -> Derivation:
        if not decoded:
            decoded.append(sections.decode(name))
        return decoded[0]

    outputs = []
    for o in sorted(sections.outputs, key=lambda o: o.name):
        fields: list[tuple[bytes, bytes]]
        match o.kind:
            case OutputKind.INPUT_ADDRESSED:
                fields = [(b'"path"', _s(o.path))]
            case OutputKind.FIXED:
                fields = [(b'"path"', _s(fixed_path(name, o, store_dir))),
                          (b'"hashAlgo"', _s(o.hash_algo)),
                          (b'"hash"', _s(o.fixed_hash.hex))]
            case OutputKind.FLOATING:
                fields = [(b'"hashAlgo"', _s(o.hash_algo))]
            case OutputKind.DEFERRED:
                fields = []
            case OutputKind.IMPURE:
                fields = [(b'"hashAlgo"', _s(o.hash_algo)), (b'"impure"', b"true")]
            case _:
                assert_never(o.kind)
        outputs.append((_s(o.name), _object(indent + 2, fields)))
    inner = indent + 1
    input_drvs = [
        (_s(p), _list(inner + 1, (_s(out) for out in sorted(set(node.outputs)))))
        for p, node in sorted(sections.input_drvs)
    ]
    members = [
        (b'"outputs"', _object(inner, outputs)),
        (b'"inputSrcs"', _list(inner, (_s(p) for p in sorted(set(sections.input_srcs))))),
        (b'"inputDrvs"', _object(inner, input_drvs)),
        (b'"system"', json_string(sections.system)),
        (b'"builder"', _builder(sections, drv)),
        (b'"args"', _args(sections, drv, inner)),
        (b'"env"', _env(sections, drv, inner)),
    ]
    return _object(indent, members)


def show_member(path: str, sections: Sections, store_dir: str = DEFAULT_STORE_DIR) -> bytes:
    """One derivation's entry in the top-level object (``"<path>": {...}``), indented as Nix does."""
    name = path.rsplit("/", 1)[-1][HASH_PART_LEN + 1:].removesuffix(".drv")
    return b"\n  " + _s(path) + b": " + _drv_object(name, sections, 1, store_dir)


def show_document(members: Iterable[bytes]) -> bytes:
    """Wrap rendered members (already in Nix's order, see :func:`show_order`) in the top object."""
    body = b",".join(members)
    return (b"{" + body + b"\n}\n") if body else b"{}\n"


def show_order(paths: Iterable[str]) -> list[str]:
    """Nix prints a set of store paths, ordered by base name; repeats collapse."""
    by_base = {path.rsplit("/", 1)[-1]: path for path in paths}
    return [by_base[base] for base in sorted(by_base)]
