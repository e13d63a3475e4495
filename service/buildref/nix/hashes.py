"""Hash values and the textual forms Nix uses for them: hex, nix32, base64, SRI and ``algo:``."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from enum import Enum

from buildref.errors import BadHash

NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_NIX32_VALUE = {c: i for i, c in enumerate(NIX32_ALPHABET)}


class HashAlgo(Enum):
    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA512 = "sha512"

    @property
    def size(self) -> int:
        return _SIZES[self]

    @classmethod
    def parse(cls, name: str) -> HashAlgo:
        try:
            return cls(name)
        except ValueError:
            raise BadHash(f"unknown hash algorithm '{name}'") from None


_SIZES = {HashAlgo.MD5: 16, HashAlgo.SHA1: 20, HashAlgo.SHA256: 32, HashAlgo.SHA512: 64}


def nix32_len(size: int) -> int:
    """Length of the nix32 form of ``size`` bytes."""
    return (size * 8 - 1) // 5 + 1


def nix32_encode(data: bytes) -> str:
    """Nix's base-32: 5-bit groups of the little-endian bit string, most significant first."""
    value = int.from_bytes(data, "little")
    return "".join(
        NIX32_ALPHABET[(value >> (5 * k)) & 31] for k in range(nix32_len(len(data)) - 1, -1, -1)
    )


def nix32_decode(text: str, size: int) -> bytes:
    """Inverse of :func:`nix32_encode`; rejects bad characters and bits beyond ``size`` bytes."""
    if len(text) != nix32_len(size):
        raise BadHash(f"nix32 string '{text}' has the wrong length for {size} bytes")
    value = 0
    for ch in text:
        digit = _NIX32_VALUE.get(ch)
        if digit is None:
            raise BadHash(f"invalid character '{ch}' in nix32 string '{text}'")
        value = (value << 5) | digit
    if value >> (size * 8):
        raise BadHash(f"nix32 string '{text}' has bits set beyond {size} bytes")
    return value.to_bytes(size, "little")


_HEX = re.compile(r"[0-9a-fA-F]*")


@dataclass(frozen=True, slots=True)
class Hash:
    algo: HashAlgo
    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != self.algo.size:
            raise BadHash(f"a {self.algo.value} digest has {self.algo.size} bytes, not {len(self.digest)}")

    @classmethod
    def of(cls, algo: HashAlgo, data: bytes) -> Hash:
        return cls(algo, hashlib.new(algo.value, data).digest())

    @property
    def hex(self) -> str:
        return self.digest.hex()

    @property
    def nix32(self) -> str:
        return nix32_encode(self.digest)

    @property
    def base64(self) -> str:
        return base64.b64encode(self.digest).decode()

    @property
    def sri(self) -> str:
        return f"{self.algo.value}-{self.base64}"

    def __str__(self) -> str:
        return self.sri

    @classmethod
    def parse(cls, text: str, algo: HashAlgo | None = None) -> Hash:
        """Read any form Nix 2.8's ``Hash::parseAny`` accepts: ``sha256:<any>``, ``sha256-<b64>``
        (SRI) or a bare hex/nix32/base64 digest when ``algo`` is given."""
        # As Nix: a ':' anywhere makes the text before it the algorithm, else a '-' does.
        name, sep, rest = text.partition(":")
        sri = not sep
        if sri:
            name, sep, rest = text.partition("-")
        if not sep:
            if algo is None:
                raise BadHash(f"hash '{text}' does not say which algorithm it uses")
            return cls(algo, _decode_digest(text, algo, text))
        found = HashAlgo.parse(name)
        if algo is not None and found is not algo:
            raise BadHash(f"hash '{text}' should use {algo.value}, not {found.value}")
        if sri:
            return cls(found, _decode_base64(rest, found, text))
        return cls(found, _decode_digest(rest, found, text))


def _decode_digest(text: str, algo: HashAlgo, whole: str) -> bytes:
    """A digest whose form its length tells, as Nix does outside SRI: base64 must then have its
    padded length (padding, newlines or anything after the first '=' included)."""
    size = algo.size
    length = _byte_length(text, whole)
    if length == size * 2 and _HEX.fullmatch(text):
        return bytes.fromhex(text)
    if length == nix32_len(size):
        return nix32_decode(text, size)
    if length == (size + 2) // 3 * 4:
        return _decode_base64(text, algo, whole)
    raise BadHash(f"hash '{whole}' has the wrong length for {algo.value}")


def _byte_length(text: str, whole: str) -> int:
    """Nix measures the bytes it was given (which Python hands over as text, undecodable bytes
    as surrogates): after a '=' anything goes, so non-ASCII text must count as Nix counts it."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        raise BadHash(f"hash '{whole}' is not text Nix could have been given") from None


BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BASE64_VALUE = {c: i for i, c in enumerate(BASE64_ALPHABET)}


def _decode_base64(text: str, algo: HashAlgo, whole: str) -> bytes:
    """Nix 2.8's ``base64Decode``: stops at the first '=', so padding may be missing, longer or
    followed by anything; skips newlines; ignores the bits left over after the last whole byte."""
    digits = text.split("=", 1)[0].replace("\n", "")
    value = 0
    for ch in digits:
        digit = _BASE64_VALUE.get(ch)
        if digit is None:
            raise BadHash(f"invalid character {ch!r} in the base64 of hash '{whole}'")
        value = (value << 6) | digit
    bits = 6 * len(digits)
    if bits // 8 != algo.size:
        raise BadHash(f"hash '{whole}' has the wrong length for {algo.value}")
    return (value >> (bits % 8)).to_bytes(algo.size, "big")
