"""The ``.drv`` ATerm format: parse bytes into a :class:`Derivation` and print it back, byte for byte.

Parsing matches whole lists with compiled patterns so the per-item work stays in C; a malformed file
is reported with the byte offset where it stops making sense.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain
from typing import TypeVar

from buildref.errors import BadDerivation
from buildref.nix.derivation import Derivation, InputNode, Output

_T = TypeVar("_T")
_BODY = rb'[^"\\]*(?:\\.[^"\\]*)*'  # the inside of a quoted string, escapes included
_STR = rb'"' + _BODY + rb'"'
_CAPTURED = rb'"(' + _BODY + rb')"'


def _seq(item: bytes) -> bytes:
    """Zero or more comma-separated ``item``s."""
    return rb"(?:" + item + rb"(?:," + item + rb")*)?"


def _tuple(*fields: bytes) -> bytes:
    return rb"\(" + b",".join(fields) + rb"\)"


def _list(item: bytes) -> bytes:
    """A list whose inside is captured."""
    return rb"\[(" + _seq(item) + rb")\]"


_OUTPUT = _tuple(_STR, _STR, _STR, _STR)
_ENV = _tuple(_STR, _STR)
_INPUT = _tuple(_STR, rb"\[" + _seq(_STR) + rb"\]")
_OUTPUTS_LIST = re.compile(_list(_OUTPUT), re.DOTALL)
_ENV_LIST = re.compile(_list(_ENV), re.DOTALL)
_STR_LIST = re.compile(_list(_STR), re.DOTALL)
_STRING = re.compile(_CAPTURED, re.DOTALL)
_OUTPUT_ITEM = re.compile(_tuple(_CAPTURED, _CAPTURED, _CAPTURED, _CAPTURED), re.DOTALL)
_INPUT_ITEM = re.compile(_tuple(_CAPTURED, _list(_STR)), re.DOTALL)
_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_UNESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t"}


def _unescape_match(m: re.Match[bytes]) -> bytes:
    c = m.group(1)
    return _UNESCAPES.get(c, c)


def _unescape(raw: bytes) -> bytes:
    return _ESCAPE.sub(_unescape_match, raw) if b"\\" in raw else raw


def _ascii(raw: bytes, what: str) -> str:
    try:
        return _unescape(raw).decode("ascii")
    except UnicodeDecodeError:
        raise BadDerivation(f"{what} is not ASCII: {raw[:80]!r}") from None


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, expected: str) -> BadDerivation:
        if self.pos >= len(self.data):
            return BadDerivation(f"truncated derivation: expected {expected} at end of input")
        found = self.data[self.pos:self.pos + 20]
        return BadDerivation(f"expected {expected} at byte {self.pos}, found {found!r}")

    def expect(self, literal: bytes) -> None:
        if not self.data.startswith(literal, self.pos):
            raise self.fail(repr(literal.decode()))
        self.pos += len(literal)

    def match(self, pattern: re.Pattern[bytes], expected: str) -> re.Match[bytes]:
        m = pattern.match(self.data, self.pos)
        if m is None:
            raise self.fail(expected)
        self.pos = m.end()
        return m

    def string(self) -> bytes:
        return _unescape(self.match(_STRING, "a string").group(1))

    def peek(self, literal: bytes) -> bool:
        return self.data.startswith(literal, self.pos)


@dataclass(frozen=True, slots=True)
class Sections:
    """A validated derivation whose long parts (builder, args, env) are still the escaped bytes
    of the file: enough to walk a closure or print JSON without unescaping every string."""

    version: str | None
    outputs: tuple[Output, ...]
    input_drvs: tuple[tuple[str, InputNode], ...]
    input_srcs: tuple[str, ...]
    system: bytes
    builder: bytes  # escaped, without the quotes
    args: tuple[bytes, ...]  # escaped, without the quotes
    env: tuple[tuple[bytes, bytes], ...]  # escaped (key, value) pairs, in file order
    # True when the file uses only the escapes Nix writes and has no raw control bytes, so its
    # escaped strings are exactly what Nix 2.8's JSON writer prints.
    json_ready: bool = False
    # Where the inside of the input derivation list lies in the file (Derive terms only), so that
    # hashDerivationModulo can put input hashes in its place without printing the rest again.
    inputs_span: tuple[int, int] | None = None

    @property
    def canonical(self) -> bool:
        """The file's bytes are exactly what Nix prints for this derivation: a ``Derive`` term
        that uses only the escapes Nix writes (printing is then a function of the content)."""
        return self.json_ready and self.inputs_span is not None

    def decode(self, name: str) -> Derivation:
        return Derivation(
            name, self.outputs, self.input_drvs, self.input_srcs, self.system, _unescape(self.builder),
            tuple(_unescape(a) for a in self.args),
            tuple((_unescape(k), _unescape(v)) for k, v in self.env),
            self.version,
        )


def parse(data: bytes, name: str) -> Derivation:
    """Parse a ``Derive(...)`` or ``DrvWithVersion("xp-dyn-drv", ...)`` term; ``name`` is the
    derivation's name, which Nix takes from the .drv path."""
    return split(data).decode(name)


# The environment, the bulk of a drv, is matched loosely here and checked by _env_pairs, which
# tokenises it once for both parsing and printing JSON.
_WHOLE = re.compile(
    b"Derive\\(" + b",".join([_list(_OUTPUT), _list(_INPUT), _list(_STR), _CAPTURED, _CAPTURED,
                             _list(_STR), rb"\[(.*)\]"]) + rb"\)",
    re.DOTALL,
)
_ENV_PAIR = re.compile(_tuple(_CAPTURED, _CAPTURED) + rb"(?:,|\Z)", re.DOTALL)


def _env_pairs(body: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """The pairs of an environment list's inside, checked to make up all of it: matches never
    overlap, so they tile ``body`` exactly when their lengths add up to its length."""
    pairs = _ENV_PAIR.findall(body)
    if not pairs:
        if body:
            raise BadDerivation("malformed environment list")
        return ()
    # ("k","v") is 7 bytes around key and value, and all but the last pair end with a comma.
    covered = sum(map(len, chain.from_iterable(pairs))) + 8 * len(pairs) - 1
    if covered != len(body) or not body.endswith(b")"):
        raise BadDerivation("malformed environment list")
    return tuple(pairs)


_HEAD = re.compile(b"Derive\\(\\[" + _seq(_OUTPUT) + b"\\]," + _list(_INPUT) + b"," + _list(_STR) + b",",
                   re.DOTALL)


def references(data: bytes) -> tuple[list[str], list[str]]:
    """The input derivations and input sources of a derivation, read from the head of the file
    only: enough to walk a closure. The rest is checked when the derivation is split or parsed."""
    m = _HEAD.match(data)
    if m is None:  # DrvWithVersion, or malformed (split says where)
        sections = split(data)
        return [p for p, _ in sections.input_drvs], list(sections.input_srcs)
    inputs, srcs = m.groups()
    return ([_ascii(path, "input derivation") for path, _ in _INPUT_ITEM.findall(inputs)],
            [_ascii(src, "input source") for src in _STRING.findall(srcs)])


def split(data: bytes) -> Sections:
    """Check the whole term and cut it into its parts (see :class:`Sections`)."""
    m = _WHOLE.fullmatch(data)
    if m is None:  # DrvWithVersion, or malformed: the step-by-step reader says where
        return _split_stepwise(data)
    outputs, inputs, srcs, system, builder, args, env = m.groups()
    return Sections(
        None,
        _outputs(outputs),
        tuple((_ascii(path, "input derivation"), _input_outputs(outs))
              for path, outs in _INPUT_ITEM.findall(inputs)),
        _strings(srcs, _input_source),
        _unescape(system),
        builder,
        tuple(_STRING.findall(args)),
        _env_pairs(env),
        _json_ready(data),
        m.span(2),
    )


_CONTROL_BYTES = bytes(range(0x20))


_ODD_ESCAPE = re.compile(rb'\\[^"\\nrt]')


def _json_ready(data: bytes) -> bool:
    if len(data.translate(None, _CONTROL_BYTES)) != len(data):
        return False
    # With escaped backslashes removed, every backslash left must start \" \n \r or \t.
    return b"\\" not in data or _ODD_ESCAPE.search(data.replace(b"\\\\", b"")) is None


def _input_outputs(body: bytes) -> InputNode:
    """``"dev","out"`` -> the output names (they cannot hold quotes or escapes)."""
    try:
        return InputNode(tuple(body[1:-1].decode("ascii").split('","')) if body else ())
    except UnicodeDecodeError:
        raise BadDerivation(f"output name is not ASCII: {body[:80]!r}") from None


def _outputs(body: bytes) -> tuple[Output, ...]:
    outputs = tuple(
        Output(_ascii(n, "output name"), _ascii(p, "output path"), _ascii(a, "hash algorithm"),
               _ascii(h, "output hash"))
        for n, p, a, h in _OUTPUT_ITEM.findall(body)
    )
    if not outputs:
        # Nix 2.8's parser takes this, but everything after it refuses it (BasicDerivation::type,
        # called when the .drv is stored, hashed or built), so no such .drv is ever valid
        raise BadDerivation("must have at least one output")
    for output in outputs:
        output.check()
    return outputs


def _split_stepwise(data: bytes) -> Sections:
    r = _Reader(data)
    version: str | None = None
    if r.peek(b"DrvWithVersion("):
        r.expect(b"DrvWithVersion(")
        version = _ascii(r.match(_STRING, "a version string").group(1), "version")
        if version != "xp-dyn-drv":
            raise BadDerivation(f"unsupported derivation version '{version}'")
        r.expect(b",")
    else:
        r.expect(b"Derive(")

    outputs = _outputs(r.match(_OUTPUTS_LIST, "a list of outputs").group(1))
    r.expect(b",")
    # only DrvWithVersion may name outputs of outputs: Nix 2.8's Derive parser wants a flat list
    input_drvs = _node_map(r, "an input derivation path", nested=version is not None)
    r.expect(b",")
    input_srcs = _strings(r.match(_STR_LIST, "a list of input sources").group(1), _input_source)
    r.expect(b",")
    system = r.string()
    r.expect(b",")
    builder = r.match(_STRING, "the builder").group(1)
    r.expect(b",")
    args = tuple(_STRING.findall(r.match(_STR_LIST, "a list of arguments").group(1)))
    r.expect(b",")
    env = _env_pairs(r.match(_ENV_LIST, "an environment list").group(1))
    r.expect(b")")
    if r.pos != len(data):
        raise BadDerivation(f"unexpected data after the derivation at byte {r.pos}")
    return Sections(version, outputs, input_drvs, input_srcs, system, builder, args, env, _json_ready(data))


def _output_name(raw: bytes) -> str:
    return _ascii(raw, "output name")


def _input_source(raw: bytes) -> str:
    return _ascii(raw, "input source")


def _strings(body: bytes, convert: Callable[[bytes], _T]) -> tuple[_T, ...]:
    return tuple(convert(s) for s in _STRING.findall(body))


def _node_map(r: _Reader, key: str, nested: bool) -> tuple[tuple[str, InputNode], ...]:
    """``[("<key>",<node>),...]``: input derivations (with ``nested``, the general form with the
    output maps of ``DrvWithVersion``), or the outputs of a dynamic derivation."""
    r.expect(b"[")
    items: list[tuple[str, InputNode]] = []
    while not r.peek(b"]"):
        if items:
            r.expect(b",")
        r.expect(b"(")
        name = _ascii(r.match(_STRING, key).group(1), key)
        r.expect(b",")
        items.append((name, _input_node(r, nested)))
        r.expect(b")")
    r.expect(b"]")
    return tuple(items)


def _input_node(r: _Reader, nested: bool) -> InputNode:
    if not nested or not r.peek(b"("):
        return InputNode(_strings(r.match(_STR_LIST, "a list of output names").group(1), _output_name))
    r.expect(b"(")
    outs = r.match(_STR_LIST, "a list of output names").group(1)
    r.expect(b",")
    children = _node_map(r, "an output name", nested)
    r.expect(b")")
    return InputNode(_strings(outs, _output_name), children)


# Printing ---------------------------------------------------------------------------------------

def escape(value: bytes) -> bytes:
    """Quote a string the way Nix's ``printString`` does."""
    if b"\\" in value:
        value = value.replace(b"\\", b"\\\\")
    if b'"' in value:
        value = value.replace(b'"', b'\\"')
    if b"\n" in value:
        value = value.replace(b"\n", b"\\n")
    if b"\r" in value:
        value = value.replace(b"\r", b"\\r")
    if b"\t" in value:
        value = value.replace(b"\t", b"\\t")
    return b'"' + value + b'"'


def _plain(value: str) -> bytes:
    """Nix prints store paths, output names and hashes unescaped."""
    return b'"' + value.encode() + b'"'


def print_input_drvs(inputs: Iterable[tuple[str, Iterable[str]]]) -> bytes:
    """The inside of an input derivation list (no dynamic outputs), as Nix prints it."""
    return b",".join(b"(" + _plain(path) + b"," + _plain_list(sorted(outs)) + b")" for path, outs in inputs)


def _plain_list(values: Iterable[str]) -> bytes:
    return b"[" + b",".join(_plain(v) for v in values) + b"]"


def _node(node: InputNode) -> bytes:
    outs = _plain_list(node.outputs)
    if not node.children:
        return outs
    kids = b",".join(b"(" + _plain(name) + b"," + _node(child) + b")" for name, child in node.children)
    return b"(" + outs + b",[" + kids + b"])"


def print_drv(drv: Derivation, input_drvs: tuple[tuple[str, InputNode], ...] | None = None,
              outputs: tuple[Output, ...] | None = None,
              env: tuple[tuple[bytes, bytes], ...] | None = None) -> bytes:
    """Print ``drv`` as Nix writes it. The keyword arguments replace parts of it, which is how
    hashDerivationModulo prints masked outputs and input hashes in place of input paths."""
    outs = drv.outputs if outputs is None else outputs
    inputs = drv.input_drvs if input_drvs is None else input_drvs
    dynamic = any(node.children for _, node in inputs)
    parts = [
        b'DrvWithVersion("xp-dyn-drv",[' if dynamic else b"Derive([",
        b",".join(
            b"(" + _plain(o.name) + b"," + _plain(o.path) + b"," + _plain(o.hash_algo) + b","
            + _plain(o.hash) + b")"
            for o in outs
        ),
        b"],[",
        b",".join(b"(" + _plain(path) + b"," + _node(node) + b")" for path, node in inputs),
        b"],",
        _plain_list(drv.input_srcs),
        b",",
        b'"' + drv.system + b'"',  # Nix prints the system unescaped
        b",",
        escape(drv.builder),
        b",[",
        b",".join(escape(a) for a in drv.args),
        b"],[",
        b",".join(b"(" + escape(k) + b"," + escape(v) + b")" for k, v in (drv.env if env is None else env)),
        b"])",
    ]
    return b"".join(parts)
