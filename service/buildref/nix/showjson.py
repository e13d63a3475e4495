"""The JSON ``nix show-derivation`` prints (Nix 2.8 shape), byte for byte.

Nix 2.8's JSON writer escapes only ``"``, ``\\``, ``\\n``, ``\\r``, ``\\t`` and other bytes below 0x20
(as ``\\u00xx``) and copies every other byte as it is, so values that are not UTF-8 come out raw: the
output is bytes, not text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from buildref.nix.derivation import Derivation, OutputKind
from buildref.nix.drvhash import fixed_path
from buildref.nix.storepath import DEFAULT_STORE_DIR

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
    return json_string(value.encode())


def _object(indent: int, members: list[tuple[bytes, bytes]]) -> bytes:
    """``members`` are (quoted key, rendered value) pairs; values already carry their own nesting."""
    if not members:
        return b"{}"
    pad = b"\n" + b"  " * (indent + 1)
    body = b",".join(pad + key + b": " + value for key, value in members)
    return b"{" + body + b"\n" + b"  " * indent + b"}"


def _list(indent: int, items: Iterable[bytes]) -> bytes:
    rendered = list(items)
    if not rendered:
        return b"[]"
    pad = b"\n" + b"  " * (indent + 1)
    return b"[" + b",".join(pad + item for item in rendered) + b"\n" + b"  " * indent + b"]"


def _drv_object(drv: Derivation, indent: int, store_dir: str) -> bytes:
    outputs = []
    for o in drv.outputs:
        fields: list[tuple[bytes, bytes]]
        match o.kind:
            case OutputKind.INPUT_ADDRESSED:
                fields = [(b'"path"', _s(o.path))]
            case OutputKind.FIXED:
                fields = [
                    (b'"path"', _s(fixed_path(drv, o, store_dir))),
                    (b'"hashAlgo"', _s(o.hash_algo)),
                    (b'"hash"', _s(o.fixed_hash.hex)),
                ]
            case OutputKind.FLOATING:
                fields = [(b'"hashAlgo"', _s(o.hash_algo))]
            case OutputKind.DEFERRED:
                fields = []
            case OutputKind.IMPURE:
                fields = [(b'"hashAlgo"', _s(o.hash_algo)), (b'"impure"', b"true")]
        outputs.append((_s(o.name), _object(indent + 2, fields)))
    inner = indent + 1
    members = [
        (b'"outputs"', _object(inner, outputs)),
        (b'"inputSrcs"', _list(inner, (_s(p) for p in drv.input_srcs))),
        (
            b'"inputDrvs"',
            _object(
                inner,
                [(_s(p), _list(inner + 1, (_s(o) for o in node.outputs))) for p, node in drv.input_drvs],
            ),
        ),
        (b'"system"', json_string(drv.system)),
        (b'"builder"', json_string(drv.builder)),
        (b'"args"', _list(inner, (json_string(a) for a in drv.args))),
        (b'"env"', _object(inner, [(json_string(k), json_string(v)) for k, v in drv.env])),
    ]
    return _object(indent, members)


def show_derivations(drvs: Iterable[tuple[str, Derivation]], store_dir: str = DEFAULT_STORE_DIR) -> bytes:
    """The whole ``nix show-derivation`` output for ``(drv path, derivation)`` pairs, ordered as Nix
    orders a set of store paths (by base name)."""
    ordered = sorted(drvs, key=lambda item: item[0].rsplit("/", 1)[-1])
    return _object(0, [(_s(path), _drv_object(drv, 1, store_dir)) for path, drv in ordered]) + b"\n"
