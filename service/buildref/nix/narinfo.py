"""Binary cache metadata as Nix 2.8 reads and signs it: ``.narinfo`` files, ``nix-cache-info``,
binary cache signing keys, and ed25519 signatures over a store path's fingerprint.

Pure: every function works on the text or bytes it is handed. The parsers follow Nix 2.8's
``NarInfo::NarInfo`` (src/libstore/nar-info.cc), ``BinaryCacheStore::init`` and src/libstore/crypto.cc
so that what Nix rejects as corrupt is rejected here too.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from buildref.errors import BadHash, BadNarInfo, BadSigningKey, BadStorePath
from buildref.nix.hashes import Hash, HashAlgo
from buildref.nix.storepath import DEFAULT_STORE_DIR, StorePath

_DIGITS = re.compile(r"[0-9]+")
_BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BASE64_VALUE = {c: i for i, c in enumerate(_BASE64_ALPHABET)}
PUBLIC_KEY_BYTES = 32
SECRET_KEY_BYTES = 64
SIGNATURE_BYTES = 64


@dataclass(frozen=True, slots=True)
class NarInfoFile:
    """A parsed ``<hash>.narinfo``: what a binary cache says about one store path.

    Named apart from :class:`buildref.nix.nar.NarDigest` (the NAR hash and size of a file tree).
    ``references`` and ``deriver`` are full store paths; ``references`` and ``sigs`` are sorted and
    without duplicates, as Nix holds them in sets. Keys Nix does not know are kept in ``unknown``.
    """

    store_path: str
    url: str
    compression: str
    file_hash: Hash | None
    file_size: int
    nar_hash: Hash
    nar_size: int
    references: tuple[str, ...]
    deriver: str | None
    system: str | None
    sigs: tuple[str, ...]
    ca: str | None
    unknown: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, data: bytes | str, store_dir: str = DEFAULT_STORE_DIR,
              whence: str = "narinfo") -> NarInfoFile:
        """Read a ``.narinfo``; ``whence`` names it in errors (Nix: "NAR info file '...' is corrupt")."""
        text = _decode(data, whence)
        store_dir = store_dir.rstrip("/")

        def corrupt(why: str) -> BadNarInfo:
            return BadNarInfo(f"NAR info file '{whence}' is corrupt: {why}")

        def hash_field(key: str, value: str) -> Hash:
            # Nix's Hash::parseAnyPrefixed: "sha256:<any encoding>" or SRI, never a bare digest
            # (Hash.parse without an algorithm refuses one).
            try:
                return Hash.parse(value)
            except BadHash as e:
                raise corrupt(f"{key}: {e.args[0]}") from None

        def size_field(key: str, value: str) -> int:
            if not _DIGITS.fullmatch(value):
                raise corrupt(f"{key} '{value}' is not a number")
            return int(value)

        def base_name(key: str, value: str) -> str:
            try:
                return str(StorePath.parse(f"{store_dir}/{value}", store_dir))
            except BadStorePath as e:
                raise corrupt(f"{key}: {e.args[0]}") from None

        store_path: str | None = None
        url = ""
        compression = ""
        file_hash: Hash | None = None
        file_size = 0
        nar_hash: Hash | None = None
        nar_size = 0
        references: set[str] = set()
        deriver: str | None = None
        system: str | None = None
        sigs: set[str] = set()
        ca: str | None = None
        unknown: list[tuple[str, str]] = []

        # The same scan as Nix: a key runs to the next ':', its value starts two characters later
        # (after ": ") and runs to the next newline; the last line must end in a newline.
        pos = 0
        while pos < len(text):
            colon = text.find(":", pos)
            if colon < 0:
                raise corrupt("a line has no ':'")
            key = text[pos:colon]
            eol = text.find("\n", colon + 2)
            if eol < 0:
                raise corrupt("the last line does not end in a newline")
            value = text[colon + 2:eol]
            pos = eol + 1
            match key:
                case "StorePath":
                    try:
                        store_path = str(StorePath.parse(value, store_dir))
                    except BadStorePath as e:
                        raise corrupt(e.args[0]) from None
                case "URL":
                    url = value
                case "Compression":
                    compression = value
                case "FileHash":
                    file_hash = hash_field(key, value)
                case "FileSize":
                    file_size = size_field(key, value)
                case "NarHash":
                    nar_hash = hash_field(key, value)
                case "NarSize":
                    nar_size = size_field(key, value)
                case "References":
                    if references:
                        raise corrupt("References appears twice")
                    references = {base_name(key, ref) for ref in value.split(" ") if ref}
                case "Deriver":
                    deriver = None if value == "unknown-deriver" else base_name(key, value)
                case "System":
                    system = value
                case "Sig":
                    sigs.add(value)
                case "CA":
                    if ca is not None:
                        raise corrupt("CA appears twice")
                    ca = check_content_address(value, whence) if value else None
                case _:
                    unknown.append((key, value))

        if store_path is None:
            raise corrupt("StorePath is missing")
        if nar_hash is None:
            raise corrupt("NarHash is missing")
        if not url:
            raise corrupt("URL is missing")
        if nar_size == 0:
            raise corrupt("NarSize is missing or 0")
        return cls(
            store_path=store_path,
            url=url,
            compression=compression or "bzip2",
            file_hash=file_hash,
            file_size=file_size,
            nar_hash=nar_hash,
            nar_size=nar_size,
            references=tuple(sorted(references)),
            deriver=deriver,
            system=system,
            sigs=tuple(sorted(sigs)),
            ca=ca,
            unknown=tuple(unknown),
        )

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.store_path, self.nar_hash, self.nar_size, self.references)

    def render(self) -> str:
        """The text Nix's ``NarInfo::to_string`` writes (references and deriver as base names)."""
        lines = [
            f"StorePath: {self.store_path}",
            f"URL: {self.url}",
            f"Compression: {self.compression}",
        ]
        if self.file_hash is not None:
            lines.append(f"FileHash: {self.file_hash.algo.value}:{self.file_hash.nix32}")
            lines.append(f"FileSize: {self.file_size}")
        lines.append(f"NarHash: {self.nar_hash.algo.value}:{self.nar_hash.nix32}")
        lines.append(f"NarSize: {self.nar_size}")
        lines.append("References: " + " ".join(_base(ref) for ref in self.references))
        if self.deriver is not None:
            lines.append(f"Deriver: {_base(self.deriver)}")
        if self.system is not None:
            lines.append(f"System: {self.system}")
        lines.extend(f"Sig: {sig}" for sig in self.sigs)
        if self.ca is not None:
            lines.append(f"CA: {self.ca}")
        return "".join(line + "\n" for line in lines)

    def signed_by(self, public_keys: Mapping[str, PublicKey]) -> str | None:
        """The name of a key in ``public_keys`` with a valid ``Sig`` on this path, if any."""
        message = self.fingerprint.encode()
        for sig in self.sigs:
            name = verify_signature(message, sig, public_keys)
            if name is not None:
                return name
        return None


def _base(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _decode(data: bytes | str, whence: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise BadNarInfo(f"'{whence}' is not UTF-8 text") from None


def fingerprint(store_path: str, nar_hash: Hash, nar_size: int, references: Iterable[str]) -> str:
    """What a binary cache signature signs, as Nix's ``ValidPathInfo::fingerprint``:
    ``1;<path>;<algo>:<nix32 NAR hash>;<NAR size>;<full reference paths, sorted, comma-joined>``.

    Whatever form the narinfo spelled the NAR hash in, the fingerprint uses nix32 with the algorithm
    prefix; references are a set in Nix, so duplicates go and the order is sorted.
    """
    if nar_size == 0:
        raise BadNarInfo(f"cannot compute the fingerprint of '{store_path}': its NAR size is not known")
    refs = ",".join(sorted(set(references)))
    return f"1;{store_path};{nar_hash.algo.value}:{nar_hash.nix32};{nar_size};{refs}"


_CA_METHOD = re.compile(r"(text|fixed:r|fixed):([a-z0-9]+):([0-9a-zA-Z+/=]+)")


def check_content_address(value: str, whence: str = "narinfo") -> str:
    """Validate a ``CA:`` value (``text:sha256:<h>``, ``fixed:[r:]<algo>:<h>``) as Nix's
    ``parseContentAddress`` does; returns it unchanged."""
    found = _CA_METHOD.fullmatch(value)
    if found is None:
        raise BadNarInfo(f"NAR info file '{whence}' has an invalid content address '{value}'")
    method, algo_name, digest = found.groups()
    try:
        algo = HashAlgo.parse(algo_name)
        if method == "text" and algo is not HashAlgo.SHA256:
            raise BadHash(f"a text content address uses sha256, not {algo.value}")
        # Nix's parseNonSRIUnprefixed: hex, nix32 or base64 without a prefix.
        Hash.parse(digest, algo)
    except BadHash as e:
        raise BadNarInfo(f"NAR info file '{whence}' has an invalid content address '{value}': "
                         f"{e.args[0]}") from None
    return value


def nix_base64_decode(text: str) -> bytes:
    """Nix's lenient ``base64Decode``: stops at the first '=', skips newlines, rejects anything else
    outside the alphabet (so key files with a trailing newline read as Nix reads them)."""
    out = bytearray()
    bits = 0
    acc = 0
    for ch in text:
        if ch == "=":
            break
        if ch == "\n":
            continue
        digit = _BASE64_VALUE.get(ch)
        if digit is None:
            raise ValueError(f"invalid character in base64 string: {ch!r}")
        acc = (acc << 6 | digit) & 0xFFFF
        bits += 6
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    return bytes(out)


def _split_key(text: str, what: str) -> tuple[str, bytes]:
    name, colon, encoded = text.partition(":")
    if not colon or not name or not encoded:
        raise BadSigningKey(f"{what} is not 'name:base64'")
    try:
        return name, nix_base64_decode(encoded)
    except ValueError as e:
        raise BadSigningKey(f"{what} '{name}' is not valid base64: {e}") from None


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A binary cache's public key, as in ``trusted-public-keys``: ``name:base64(32 bytes)``."""

    name: str
    key: bytes

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        name, key = _split_key(text, "public key")
        if len(key) != PUBLIC_KEY_BYTES:
            raise BadSigningKey(f"public key '{name}' has {len(key)} bytes, not {PUBLIC_KEY_BYTES}")
        return cls(name, key)

    def __str__(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode()}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class SecretKey:
    """A secret key file from ``nix-store --generate-binary-cache-key``: ``name:base64(64 bytes)``,
    libsodium's layout (the 32-byte ed25519 seed, then the public key)."""

    name: str
    key: bytes

    @classmethod
    def parse(cls, text: str) -> SecretKey:
        name, key = _split_key(text, "secret key")
        if len(key) != SECRET_KEY_BYTES:
            raise BadSigningKey(f"secret key '{name}' has {len(key)} bytes, not {SECRET_KEY_BYTES}")
        secret = cls(name, key)
        # libsodium signs with the public half stored in the key: a file whose halves disagree
        # would make signatures nobody can verify, so refuse it.
        if secret.public_key().key != key[32:]:
            raise BadSigningKey(f"secret key '{name}' does not hold the public key of its seed")
        return secret

    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.key[:32])

    def public_key(self) -> PublicKey:
        raw = self._private().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return PublicKey(self.name, raw)

    def sign(self, message: bytes) -> str:
        """A detached signature in Nix's ``Sig`` form: ``name:base64``."""
        return f"{self.name}:{base64.b64encode(self._private().sign(message)).decode()}"


def public_keys(texts: Iterable[str]) -> dict[str, PublicKey]:
    """Keys by name, as Nix looks them up (a later key of the same name is ignored, like
    ``std::map::emplace``)."""
    keys: dict[str, PublicKey] = {}
    for text in texts:
        key = PublicKey.parse(text)
        keys.setdefault(key.name, key)
    return keys


def verify_signature(message: bytes, sig: str, keys: Mapping[str, PublicKey]) -> str | None:
    """The key name when ``sig`` (``name:base64``) is a valid signature of ``message`` by the key of
    that name in ``keys``; None otherwise. Nix throws on a signature of the wrong length; here it
    simply does not verify, so one bad ``Sig`` line cannot hide a good one."""
    name, colon, encoded = sig.partition(":")
    key = keys.get(name) if colon and name else None
    if key is None:
        return None
    try:
        raw = nix_base64_decode(encoded)
    except ValueError:
        return None
    if len(raw) != SIGNATURE_BYTES:
        return None
    return name if key.verify(message, raw) else None


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """``<cache>/nix-cache-info``; a missing field is None (Nix then keeps its own default, and
    does not check the store directory)."""

    store_dir: str | None
    want_mass_query: bool | None
    priority: int | None

    @classmethod
    def parse(cls, data: bytes | str, whence: str = "nix-cache-info") -> CacheInfo:
        # Nix's BinaryCacheStore::init: lines without ':' are skipped, values are trimmed,
        # Priority goes through std::stoi (leading digits, optional sign).
        text = _decode(data, whence)
        store_dir: str | None = None
        want_mass_query: bool | None = None
        priority: int | None = None
        for line in text.split("\n"):
            key, colon, value = line.partition(":")
            if not colon:
                continue
            value = value.strip(" \t\n\r")
            if key == "StoreDir":
                store_dir = value
            elif key == "WantMassQuery":
                want_mass_query = value == "1"
            elif key == "Priority":
                found = re.match(r"\s*([+-]?[0-9]+)", value)
                if found is None:
                    raise BadNarInfo(f"'{whence}' has an invalid Priority '{value}'")
                priority = int(found.group(1))
        return cls(store_dir, want_mass_query, priority)
