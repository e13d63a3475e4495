"""Hash values and the textual forms Nix uses for them: hex, nix32, base64, SRI and ``algo:``."""

from __future__ import annotations

import base64
import binascii
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
        """Read any form Nix accepts: ``sha256-<b64>``, ``sha256:<any>`` or a bare hex/nix32/base64
        digest when ``algo`` is given."""
        if "-" in text and text.split("-", 1)[0] in _ALGO_NAMES:
            name, rest = text.split("-", 1)
            found = HashAlgo.parse(name)
            if algo is not None and found is not algo:
                raise BadHash(f"hash '{text}' should use {algo.value}, not {found.value}")
            return cls(found, _decode_base64(rest, found, text))
        if ":" in text:
            name, rest = text.split(":", 1)
            found = HashAlgo.parse(name)
            if algo is not None and found is not algo:
                raise BadHash(f"hash '{text}' should use {algo.value}, not {found.value}")
            return cls(found, _decode_digest(rest, found, text))
        if algo is None:
            raise BadHash(f"hash '{text}' does not say which algorithm it uses")
        return cls(algo, _decode_digest(text, algo, text))


_ALGO_NAMES = {a.value for a in HashAlgo}


def _decode_digest(text: str, algo: HashAlgo, whole: str) -> bytes:
    size = algo.size
    if len(text) == size * 2 and _HEX.fullmatch(text):
        return bytes.fromhex(text)
    if len(text) == nix32_len(size):
        return nix32_decode(text, size)
    if len(text) == (size + 2) // 3 * 4:
        return _decode_base64(text, algo, whole)
    raise BadHash(f"hash '{whole}' has the wrong length for {algo.value}")


def _decode_base64(text: str, algo: HashAlgo, whole: str) -> bytes:
    try:
        digest = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadHash(f"invalid base64 in hash '{whole}'") from None
    if len(digest) != algo.size:
        raise BadHash(f"hash '{whole}' has the wrong length for {algo.value}")
    return digest
