"""Random sets of derivations, written as a .nix file for the real Nix to instantiate."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

# Nix-language escapes for the awkward characters, and raw bytes Nix copies as they are.
AWKWARD = [b'\\"', b"\\\\", b"\\n", b"\\t", b"\\r", b"\\${", b"$x", b"{", b"}", b"'", b"\xff",
           b"\xc3\xa9", b"\x01", b"\x1f", b"\x7f", b"\xe2\x82\xac", b" ", b"(", b")", b",", b"[", b"]"]
ALGOS = {"sha1": 20, "sha256": 32, "sha512": 64, "md5": 16}
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def _nix32(data: bytes) -> str:
    value = int.from_bytes(data, "little")
    n = (len(data) * 8 - 1) // 5 + 1
    return "".join(NIX32[(value >> (5 * k)) & 31] for k in range(n - 1, -1, -1))


class DrvSet:
    def __init__(self, directory: Path, seed: int, size: int = 24, ca: bool = True) -> None:
        self.rng = random.Random(seed)
        self.directory = directory
        self.size = size
        self.ca = ca
        self.names: list[str] = []

    def _value(self) -> bytes:
        rng = self.rng
        parts = []
        for _ in range(rng.randint(0, 12)):
            parts.append(rng.choice(AWKWARD) if rng.random() < 0.5 else rng.choice([b"abc", b"x y", b"42"]))
        return b"".join(parts)

    def _string(self) -> bytes:
        return b'"' + self._value() + b'"'

    def _hash(self, algo: str) -> str:
        digest = hashlib.new(algo, self.rng.randbytes(8)).digest()
        form = self.rng.choice(["hex", "nix32", "sri"])
        if form == "hex":
            return digest.hex()
        if form == "nix32":
            return _nix32(digest)
        import base64

        return f"{algo}-{base64.b64encode(digest).decode()}"

    def _reference(self, index: int) -> bytes:
        """A string that depends on an earlier derivation."""
        rng = self.rng
        dep = rng.choice(self.names[:index])
        kind = rng.random()
        if kind < 0.15:
            return b'"${d.' + dep.encode() + b'.drvPath}"'
        if kind < 0.4:
            return b'"${d.' + dep.encode() + b'.outPath}/bin"'
        return b'"pre ${d.' + dep.encode() + b'}"'

    def _derivation(self, index: int) -> bytes:
        rng = self.rng
        name = f"d{index}-{rng.choice(['pkg', 'lib.x', 'a_b', 'v1.2+3', 'q?=', 'tool'])}"
        attrs: list[bytes] = [
            b'name = "' + name.encode() + b'"',
            b"system = builtins.currentSystem",
            b'builder = "/bin/sh"',
            b"args = [ " + b" ".join(self._string() for _ in range(rng.randint(0, 3))) + b" ]",
        ]
        for i in range(rng.randint(0, 5)):
            attrs.append(b"v" + str(i).encode() + b" = " + self._string())
        if index and rng.random() < 0.7:
            for i in range(rng.randint(1, 3)):
                attrs.append(b"dep" + str(i).encode() + b" = " + self._reference(index))
        roll = rng.random()
        if roll < 0.25:
            mode = rng.choice(["flat", "recursive"])
            algo = rng.choice(["sha1", "sha256", "sha512"] + (["md5"] if mode == "flat" else []))
            attrs += [b'outputHashMode = "' + mode.encode() + b'"',
                      b'outputHashAlgo = "' + algo.encode() + b'"',
                      b'outputHash = "' + self._hash(algo).encode() + b'"']
        elif roll < 0.35 and self.ca:
            attrs += [b"__contentAddressed = true",
                      b'outputHashMode = "' + rng.choice([b"recursive", b"flat"]) + b'"',
                      b'outputHashAlgo = "' + rng.choice([b"sha256", b"sha512", b"sha1"]) + b'"']
            if rng.random() < 0.5:
                attrs.append(b'outputs = [ "out" "dev" ]')
        elif roll < 0.4 and self.ca:
            attrs += [b"__impure = true"]
        else:
            if rng.random() < 0.4:
                outs = rng.sample([b'"dev"', b'"lib"', b'"bin"', b'"man"'], rng.randint(1, 3))
                attrs.append(b'outputs = [ "out" ' + b" ".join(outs) + b" ]")
            if rng.random() < 0.25:
                attrs += [b"__structuredAttrs = true",
                          b"nested = { list = [ 1 2.5 true null " + self._string() + b" ]; s = "
                          + self._string() + b"; }"]
            elif rng.random() < 0.3:
                attrs += [b"big = " + self._string(), b'passAsFile = [ "big" ]']
        if rng.random() < 0.3:
            attrs.append(b"file = builtins.toFile \"t" + str(index).encode() + b'" ' + self._string())
        if rng.random() < 0.2:
            attrs.append(b'ref = builtins.toFile "r' + str(index).encode()
                         + b'" "see ${builtins.toFile "inner' + str(index).encode() + b'" "x"}"')
        if rng.random() < 0.3:
            attrs.append(rng.choice([b"src = ./data", b'src = "${./data}/x"', b"tree = ./tree"]))
        self.names.append(f"n{index}")
        return b"  n" + str(index).encode() + b" = derivation { " + b"; ".join(attrs) + b"; };\n"

    def write(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").write_bytes(self.rng.randbytes(100))
        tree = self.directory / "tree"
        (tree / "sub").mkdir(parents=True, exist_ok=True)
        (tree / "sub" / "f").write_text("f")
        (tree / "run").write_text("#!/bin/sh\n")
        (tree / "run").chmod(0o755)
        body = b"".join(self._derivation(i) for i in range(self.size))
        text = b"let d = {\n" + body + b"}; in d\n"
        path = self.directory / "set.nix"
        path.write_bytes(text)
        return path
